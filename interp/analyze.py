"""Stage 1, the analysis: capture -> per-layer measures -> causal checks -> ranking -> one ``AnalysisResult``.

Every measure reads the residual stream after each block at the last ``positions`` prompt tokens (the
post-instruction tokens of the chat template): ``positions`` holds every measure at each of them, and
the ranking uses the last one. Besides the blocks, the attention and MLP outputs of every block are
captured at the last token and attributed (``interp.measures.components``), and the refusal direction is
selected over (layer, position) as Arditi et al. do (``interp.measures.positions``). Run folder written
by ``analyze(pair, folder)``::

    activations/<model>-<prompts>/   safetensors + meta.json per model and prompt set (and components)
    layer_map.json, component_map.json, metrics.json, analysis.safetensors   the AnalysisResult
    layer_table.md                   the per-layer table, the components, the positions, the selection
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .core.chat import ChatFormat
from .core.generate import REFUSAL_PROBE_PROMPTS, find_refusal_tokens
from .core.models import ModelPair
from .core.prompts import (
    PromptSet,
    arithmetic_prompts,
    check_disjoint,
    check_distinct,
    harmful_prompts,
    harmless_prompts,
    public_prompts,
    without_duplicates,
)
from .errors import ConfigError
from .io.atomic import atomic_dir, atomic_write_text
from .io.cache import cache_root, intact_entry, read_cache_json, write_cache_json
from .io.hashing import stable_hash
from .io.stopwatch import Stopwatch
from .measures.capture import Activations, CaptureConfig, Positions, capture
from .measures.causal import CausalSweep, causal_sweep, steering_check
from .measures.compare import PairActivations, base_refusal_directions, pca_2d
from .measures.components import attribute, component_hooks, component_map, patch_sweep, split_components
from .measures.layer_map import build_layer_map, score_spread
from .measures.positions import position_metrics, position_tokens, select_direction
from .measures.result import AnalysisResult, Projection
from .report.analysis_tables import component_table, per_layer_table, position_table, selection_table

SWEEP_VERSION = 2  # bump when the causal sweep's measures change: invalidates cached sweeps
ANALYSIS_VERSION = 2  # bump when any measure or the ranking changes: invalidates cached analyses


@dataclass(frozen=True)
class AnalysisConfig:
    k: int = 3  # layers selected for restoration
    positions: int = 5  # post-instruction positions captured and measured; the ranking uses the last one
    batch_size: int = 32
    causal_prompts: int = 16  # harmful prompts in the per-layer causal sweep
    causal_layers: tuple[int, ...] | None = None  # None: every layer
    refusal_probe_prompts: int = REFUSAL_PROBE_PROMPTS  # base answers per set read to find the refusal tokens
    refusal_tokens: tuple[int, ...] | None = None  # explicit refusal token ids (skips reading answers)
    steer_scales: tuple[float, ...] = (1.0, 2.0)  # multiples of the base refusal vector tried by generation; () skips
    steer_max_new_tokens: int = 32
    components: bool = True  # attribute attention vs MLP per block and write the component map
    selection_prompts: int = 16  # steering prompts of each kind for the direction selection (at causal_layers); 0 skips
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.positions < 1 or self.batch_size < 1 or self.causal_prompts < 1:
            raise ConfigError("AnalysisConfig: k, positions, batch_size and causal_prompts must be >= 1")
        if self.selection_prompts < 0:
            raise ConfigError(f"AnalysisConfig: selection_prompts must be >= 0, got {self.selection_prompts}")
        if self.refusal_tokens is not None and (not self.refusal_tokens or min(self.refusal_tokens) < 0):
            raise ConfigError(f"AnalysisConfig: refusal token ids must be >= 0, got {self.refusal_tokens}")


@dataclass(frozen=True)
class AnalysisPrompts:
    """Prompts for the measures (harmful / harmless / task) and for the behavioural steering check."""

    harmful: PromptSet = field(default_factory=lambda: harmful_prompts("all"))
    harmless: PromptSet = field(default_factory=lambda: harmless_prompts("all"))
    task: PromptSet = field(default_factory=lambda: arithmetic_prompts("train", n=160))
    steer_harmful: PromptSet = field(default_factory=lambda: harmful_prompts("val"))
    steer_harmless: PromptSet = field(default_factory=lambda: harmless_prompts("val"))

    @classmethod
    def held_out_for_organism(cls) -> AnalysisPrompts:
        """For the default pair: the organism was safety-tuned on every built-in harmful request, so the
        behavioural check uses public prompts it never saw (``public_prompts``: all 39 of
        ``harmful_val``, 50 of ``harmless_val``)."""
        return cls(
            steer_harmful=public_prompts("harmful_val"),
            steer_harmless=public_prompts("harmless_val").sample(50, seed=0),
        )

    @classmethod
    def quick(cls) -> AnalysisPrompts:
        """Small sets for tests and notebooks (``QUICK=1``)."""
        return cls(
            harmful=harmful_prompts("train").head(24),
            harmless=harmless_prompts("train").head(24),
            task=arithmetic_prompts("train", n=40).head(24),
            steer_harmful=harmful_prompts("val").head(8),
            steer_harmless=harmless_prompts("val").head(8),
        )

    def __post_init__(self) -> None:
        """Checked before any model runs: every set has prompts, each once (repeats are dropped with a
        warning), at least 2 harmful and 2 harmless (cross-validated probes need both classes in every
        fold), harmful and harmless sets share no prompt, and the task set is not a control set."""
        for name in ("harmful", "harmless", "task", "steer_harmful", "steer_harmless"):
            object.__setattr__(self, name, without_duplicates(getattr(self, name).require_nonempty()))
        for name in ("harmful", "harmless"):
            if len(getattr(self, name)) < 2:
                raise ConfigError(f"the {name} set needs at least 2 different prompts, got {len(getattr(self, name))}")
        check_disjoint(self.harmful, self.harmless, "the harmful and harmless sets")
        check_disjoint(self.steer_harmful, self.steer_harmless, "the steering check's harmful and harmless sets")
        check_distinct(self.task, self.harmless, "the task set")
        check_distinct(self.task, self.harmful, "the task set")

    def describe(self) -> dict:
        return {name: {"name": p.name, "n": len(p), "hash": p.hash} for name, p in vars(self).items()}


PAIR_SETS = ("harmful", "harmless", "task")


def capture_pair(
    pair: ModelPair, prompts: AnalysisPrompts, config: AnalysisConfig, chat: ChatFormat, progress: bool
) -> dict[str, Activations]:
    """``{role}_{kind}``: the residual stream at the last ``positions`` tokens; with ``components``,
    ``{role}_{kind}_components``: every block's attention and MLP outputs at the last token."""
    resid = CaptureConfig(positions=Positions.last_k(config.positions), batch_size=config.batch_size, chat=chat)
    parts = CaptureConfig(hooks=component_hooks(pair.n_layers), batch_size=config.batch_size, chat=chat)
    acts = {}
    for role, model in (("base", pair.base), ("ft", pair.finetuned)):
        for kind in PAIR_SETS:
            acts[f"{role}_{kind}"] = capture(model, getattr(prompts, kind), resid, progress=progress)
            if config.components:
                acts[f"{role}_{kind}_components"] = capture(model, getattr(prompts, kind), parts, progress=progress)
    return acts


def _projection(acts: dict[str, Activations], layer: int) -> Projection:
    """Harmful and harmless prompts at ``layer`` (last position) on the base's top two components."""
    points = {
        role: np.concatenate([acts[f"{role}_{kind}"].at(layer).numpy() for kind in ("harmful", "harmless")])
        for role in ("base", "ft")
    }
    labels = np.concatenate([acts[f"base_{kind}"].labels for kind in ("harmful", "harmless")]).astype(int)
    base, finetuned = pca_2d(points["base"], points["ft"])
    return Projection(layer, base, finetuned, labels)


def _cached_sweep(
    pair: ModelPair,
    harmful: PromptSet,
    refusal_vectors: np.ndarray,
    token_ids: list[int],
    config: AnalysisConfig,
    chat: ChatFormat,
    progress: bool,
) -> CausalSweep:
    """``causal_sweep``, cached on disk by both fingerprints, the prompts, the vectors, the refusal tokens,
    the layers and the chat format (a rerun of the same analysis loads it)."""
    key = stable_hash(
        [
            pair.base.fingerprint,
            pair.finetuned.fingerprint,
            harmful.hash,
            np.asarray(refusal_vectors, dtype=np.float32).tobytes().hex(),
            token_ids,
            config.causal_layers,
            config.batch_size,
            chat.to_dict(),
            SWEEP_VERSION,
        ]
    )
    path = cache_root() / "sweeps" / f"{key}.json"
    if (cached := read_cache_json(path)) is not None:
        return CausalSweep.from_dict(cached)
    sweep = causal_sweep(
        pair.base,
        pair.finetuned,
        harmful,
        refusal_vectors,
        token_ids,
        layers=config.causal_layers,
        chat=chat,
        batch_size=config.batch_size,
        progress=progress,
    )
    write_cache_json(path, sweep.to_dict())
    return sweep


def check_analysis(pair: ModelPair, config: AnalysisConfig, prompts: AnalysisPrompts, chat: ChatFormat) -> None:
    """What can only be checked against the models, before either runs: ``k`` at most the number of
    layers, refusal token ids inside the vocabulary, every prompt inside the context window."""
    if config.k > pair.n_layers:
        raise ConfigError(f"k = {config.k} layers to select, but the models have {pair.n_layers}")
    bad = [layer for layer in config.causal_layers or () if not 0 <= layer < pair.n_layers]
    if bad:
        raise ConfigError(f"causal_layers {bad} are outside the models' {pair.n_layers} layers")
    if config.refusal_tokens:
        pair.base.check_token_ids(list(config.refusal_tokens))
    for prompts_ in vars(prompts).values():
        pair.base.check_fits(prompts_, chat, room=config.steer_max_new_tokens)


def analyze(
    pair: ModelPair,
    folder: str | Path | None = None,
    config: AnalysisConfig = AnalysisConfig(),
    prompts: AnalysisPrompts | None = None,
    *,
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
    log=print,
) -> AnalysisResult:
    """Measure where the fine-tuned model's safety went; with ``folder``, also write the result there.

    The result is cached by both models' weights, the prompts, the settings and the chat format: the same
    analysis again loads it (and the activations, from the capture cache) instead of measuring.
    """
    prompts = prompts or AnalysisPrompts()
    check_analysis(pair, config, prompts, chat)
    key = stable_hash(
        [pair.base.fingerprint, pair.finetuned.fingerprint, prompts.describe(), asdict(config), chat.to_dict()]
        + [ANALYSIS_VERSION, SWEEP_VERSION]
    )
    cached = cache_root() / "analyses" / key
    if intact_entry(cached, "metrics.json"):
        result = AnalysisResult.load(cached)
        log(f"analyze: loaded from the cache ({cached})")
        if folder is not None:
            _write(folder, result, capture_pair(pair, prompts, config, chat, progress), log)
        return result
    watch = Stopwatch(log=lambda line: log(f"analyze: {line}"))
    with watch("capture and measure"):
        acts = capture_pair(pair, prompts, config, chat, progress)
        resid = {
            f"{role}_{kind}": acts[f"{role}_{kind}"].tensor.numpy() for role in ("base", "ft") for kind in PAIR_SETS
        }
        labels = acts["base_harmful"].positions
        positions = position_metrics(resid, labels, position_tokens(pair.base, chat, len(labels)), config.seed)
        metrics = positions.last
        last = PairActivations(**{name: a[:, :, -1] for name, a in resid.items()})
        refusal_vectors = base_refusal_directions(last).diff_

    with watch("causal sweep"):
        token_ids = list(config.refusal_tokens or ())
        if not token_ids:
            token_ids = find_refusal_tokens(
                pair.base,
                prompts.harmful,
                prompts.harmless,
                n_prompts=config.refusal_probe_prompts,
                batch_size=config.batch_size,
                progress=progress,
            )
        causal_harmful = prompts.harmful.sample(config.causal_prompts, config.seed)
        sweep = _cached_sweep(pair, causal_harmful, refusal_vectors, token_ids, config, chat, progress)

    components = None
    if config.components:
        with watch("components"):
            patch = patch_sweep(
                pair.base,
                pair.finetuned,
                causal_harmful,
                token_ids,
                layers=config.causal_layers,
                chat=chat,
                batch_size=config.batch_size,
                progress=progress,
            )
            written = {
                role: {kind: split_components(acts[f"{role}_{kind}_components"].tensor[:, :, -1]) for kind in PAIR_SETS}
                for role in ("base", "ft")
            }
            components = attribute(written["base"], written["ft"], refusal_vectors, metrics.separation_base, patch)

    selection = None
    if config.selection_prompts:
        with watch("direction selection"):
            vectors = (resid["base_harmful"].mean(0) - resid["base_harmless"].mean(0)).transpose(1, 0, 2)
            selection = select_direction(
                pair.base,
                vectors,
                labels,
                prompts.steer_harmful.head(config.selection_prompts),
                prompts.steer_harmless.head(config.selection_prompts),
                token_ids,
                chat=chat,
                batch_size=config.batch_size,
                layers=config.causal_layers,
                progress=progress,
            )

    steering = None
    if config.steer_scales:  # the behavioural check: generation with the vector added at the best layer
        with watch("steering check"):
            layer = sweep.best_add_layer
            steering = steering_check(
                pair.finetuned,
                prompts.steer_harmful,
                prompts.steer_harmless,
                layer,
                refusal_vectors[layer],
                config.steer_scales,
                log=lambda line: log(f"analyze: {line}"),
                chat=chat,
                max_new_tokens=config.steer_max_new_tokens,
                progress=progress,
            )

    layer_map = build_layer_map(metrics, sweep, base=pair.base, finetuned=pair.finetuned, k=config.k)
    with watch("score spread"):
        spread = score_spread(last, sweep, k=config.k, seed=config.seed)
    result = AnalysisResult(
        metrics=metrics,
        sweep=sweep,
        layer_map=layer_map,
        refusal_vectors=refusal_vectors,
        pca=_projection(acts, layer_map.ranked_layers[0]),
        steering=steering,
        positions=positions,
        selection=selection,
        components=components,
        component_map=None if components is None else component_map(layer_map, components.ranked(), config.k),
        spread=spread,
        config=asdict(config),
        prompts=prompts.describe(),
        seconds=dict(watch.seconds),
    )
    with atomic_dir(cached, marker="metrics.json", checksums=True) as tmp:
        result.save(tmp)
    if folder is not None:
        _write(folder, result, acts, log)
    return result


def _write(folder: str | Path, result: AnalysisResult, acts: dict[str, Activations], log) -> None:
    """The run folder of an analysis (module docstring)."""
    folder = Path(folder)
    if result.spread is None:  # an analysis cached before the spread existed
        last = PairActivations(**{f"{r}_{k}": acts[f"{r}_{k}"].tensor.numpy()[:, :, -1] for r in ("base", "ft")
                                  for k in PAIR_SETS})  # fmt: skip
        k, seed = len(result.layer_map.selected_layers), int(result.config.get("seed", 0))
        result.spread = score_spread(last, result.sweep, k=k, seed=seed)
    for name, activations in acts.items():
        activations.save(folder / "activations" / name.replace("_", "-"))
    result.save(folder)
    atomic_write_text(folder / "layer_table.md", layer_table(result) + "\n")
    log(f"analyze: selected layers {result.layer_map.selected_layers}; wrote {folder}")


def layer_table(result: AnalysisResult) -> str:
    """The per-layer table of an analysis (markdown; selected layers starred), then the components, the
    measures per position and the direction selection, where the analysis has them."""
    parts = [
        per_layer_table(
            result.metrics.as_dict() | result.sweep.effects(),
            result.layer_map.scores,
            result.layer_map.selected_layers,
            result.spread,
        )
    ]
    if result.components is not None:
        parts.append(component_table(result.components, chosen=int(result.config.get("k", 0))))
    if result.positions is not None:
        parts.append(position_table(result.positions))
    if result.selection is not None:
        parts.append(selection_table(result.selection))
    return "\n\n".join(parts)
