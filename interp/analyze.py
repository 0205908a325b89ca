"""The analysis stage: capture -> per-layer measures -> causal checks -> ranking, into one run folder.

Run folder layout written here::

    activations/<model>-<prompts>/   safetensors + meta.json per model and prompt set
    metrics.json                     every per-layer metric, causal effects, steering check
    layer_table.md                   the per-layer table
    layer_map.json                   the ranked layer map that configures restoration
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .capture import Activations, CaptureConfig, Positions, capture
from .causal import causal_sweep, find_refusal_tokens, steered_behaviour
from .compare import PairActivations, base_refusal_directions, compare
from .errors import ConfigError
from .evaluate import behaviour
from .io import atomic_write_json, atomic_write_text
from .models import ModelPair
from .prompts import (
    ChatFormat, PromptSet, arithmetic_prompts, harmful_prompts, harmless_prompts, load_prompts, shared_data_dir,
)
from .ranking import LayerMap, build_layer_map


@dataclass(frozen=True)
class AnalysisConfig:
    k: int = 3  # layers selected for restoration
    positions: int = 5  # post-instruction positions captured; directions use the last one
    batch_size: int = 32
    causal_prompts: int = 16  # harmful prompts in the per-layer causal sweep
    causal_layers: tuple[int, ...] | None = None  # None: every layer
    refusal_probe_prompts: int = 16  # base answers read to find the refusal tokens
    refusal_tokens: tuple[int, ...] | None = None  # explicit refusal token ids (skips reading answers)
    steer_scales: tuple[float, ...] = (1.0, 2.0)  # multiples of the base refusal vector tried by generation; () skips
    steer_max_new_tokens: int = 32
    lora_rank: int = 8
    lora_alpha: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.positions < 1 or self.batch_size < 1 or self.causal_prompts < 1:
            raise ConfigError("AnalysisConfig: k, positions, batch_size and causal_prompts must be >= 1")


@dataclass
class AnalysisPrompts:
    """Prompts for the measures (harmful / harmless / task) and for the behavioural steering check."""

    harmful: PromptSet = field(default_factory=lambda: harmful_prompts("all"))
    harmless: PromptSet = field(default_factory=lambda: harmless_prompts("all"))
    task: PromptSet = field(default_factory=lambda: arithmetic_prompts("train", n=160))
    steer_harmful: PromptSet = field(default_factory=lambda: harmful_prompts("val"))
    steer_harmless: PromptSet = field(default_factory=lambda: harmless_prompts("val"))

    @classmethod
    def held_out_for_organism(cls) -> "AnalysisPrompts":
        """For the default pair: the organism was safety-tuned on every built-in harmful request, so the
        behavioural check uses public prompts it never saw (``../shared/data``: all 39 of
        ``harmful_val``, 50 of ``harmless_val``) when they are present, else the built-in val sets."""
        data = shared_data_dir()
        if not (data / "harmful_val.json").exists():
            return cls()
        return cls(steer_harmful=load_prompts(data / "harmful_val.json", label=1),
                   steer_harmless=load_prompts(data / "harmless_val.json", label=0).sample(50, seed=0))

    def __post_init__(self) -> None:
        for name in ("harmful", "harmless", "task", "steer_harmful", "steer_harmless"):
            getattr(self, name).require_nonempty()


@dataclass
class AnalysisResult:
    metrics: dict[str, np.ndarray]
    layer_map: LayerMap
    steering: dict
    folder: Path


def _capture_all(pair: ModelPair, prompts: AnalysisPrompts, config: AnalysisConfig, folder: Path,
                 progress: bool) -> dict[str, Activations]:
    capture_config = CaptureConfig(positions=Positions.last_k(config.positions), batch_size=config.batch_size)
    out = {}
    for role, model in (("base", pair.base), ("ft", pair.finetuned)):
        for kind in ("harmful", "harmless", "task"):
            acts = capture(model, getattr(prompts, kind), capture_config, progress=progress)
            acts.save(folder / "activations" / f"{role}-{kind}")
            out[f"{role}_{kind}"] = acts
    return out


def per_layer_table(metrics: dict[str, np.ndarray], layer_map: LayerMap) -> str:
    columns = [("probe base", "probe_acc_base"), ("probe ft", "probe_acc_finetuned"),
               ("transfer", "probe_acc_transfer"), ("cos(r_b,r_f)", "refusal_cosine"),
               ("retention", "retention"), ("task amp", "task_amplification"),
               ("patch", "patch_effect"), ("add", "add_effect"), ("score", None)]
    lines = ["| layer | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for layer in range(layer_map.n_layers):
        cells = []
        for _, key in columns:
            value = layer_map.scores[layer] if key is None else metrics[key][layer]
            cells.append("" if not np.isfinite(value) else f"{value:.3f}")
        mark = " *" if layer in layer_map.selected_layers else ""
        lines.append(f"| {layer}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def analyze(
    pair: ModelPair, folder: str | Path, config: AnalysisConfig = AnalysisConfig(),
    prompts: AnalysisPrompts | None = None, *, chat: ChatFormat = ChatFormat(), progress: bool = True, log=print,
) -> AnalysisResult:
    """Measure where the fine-tuned model's safety went and write metrics and a layer map to ``folder``."""
    folder = Path(folder)
    prompts = prompts or AnalysisPrompts()
    timings = {}
    t0 = time.perf_counter()
    acts = _capture_all(pair, prompts, config, folder, progress)
    pair_acts = PairActivations(**{name: a.tensor[:, :, -1] for name, a in acts.items()})
    metrics = compare(pair_acts, probe_seed=config.seed)
    timings["capture_and_measure"] = time.perf_counter() - t0
    log(f"analyze: captured and measured in {timings['capture_and_measure']:.0f}s")

    t0 = time.perf_counter()
    refusal = base_refusal_directions(pair_acts)
    token_ids = list(config.refusal_tokens or ())
    if not token_ids:
        token_ids = find_refusal_tokens(pair.base, prompts.harmful, n_prompts=config.refusal_probe_prompts,
                                        batch_size=config.batch_size, progress=progress)
    sweep = causal_sweep(pair.base, pair.finetuned, prompts.harmful.sample(config.causal_prompts, config.seed),
                         refusal.diff_, token_ids, layers=config.causal_layers, chat=chat,
                         batch_size=config.batch_size, progress=progress)
    metrics.update({k: v for k, v in sweep.items() if np.ndim(v) == 1})
    timings["causal_sweep"] = time.perf_counter() - t0
    log(f"analyze: causal sweep in {timings['causal_sweep']:.0f}s")

    t0 = time.perf_counter()
    best = int(np.nanargmax(metrics["add_effect"]))
    gen = {"max_new_tokens": config.steer_max_new_tokens, "batch_size": config.batch_size, "progress": progress}
    vector = refusal.diff_[best]
    plain_h = plain_n = None
    by_scale = []
    if config.steer_scales:  # the behavioural check: generation with the vector added at the best layer
        plain_h = behaviour(pair.finetuned, prompts.steer_harmful, **gen)
        plain_n = behaviour(pair.finetuned, prompts.steer_harmless, **gen)
    for scale in config.steer_scales:
        steered_h = steered_behaviour(pair.finetuned, prompts.steer_harmful, best, vector, scale, **gen)
        steered_n = steered_behaviour(pair.finetuned, prompts.steer_harmless, best, vector, scale, **gen)
        by_scale.append({"scale": scale, "harmful_refusal": steered_h.refusal_rate,
                         "harmless_refusal": steered_n.refusal_rate, "examples": steered_h.examples(3)})
        log(f"analyze: steering at layer {best} x{scale}: harmful refusal {plain_h.refusal_rate:.0%} -> "
            f"{steered_h.refusal_rate:.0%}, harmless {plain_n.refusal_rate:.0%} -> {steered_n.refusal_rate:.0%}")
    steering = {
        "layer": best, "refusal_tokens": token_ids,
        "refusal_tokens_text": [pair.base.tokenizer.decode([t]) for t in token_ids],
        "finetuned_harmful_refusal": None if plain_h is None else plain_h.refusal_rate,
        "finetuned_harmless_refusal": None if plain_n is None else plain_n.refusal_rate,
        "steered": by_scale, "n_harmful": len(prompts.steer_harmful), "n_harmless": len(prompts.steer_harmless),
        "prompts": {"harmful": prompts.steer_harmful.name, "harmless": prompts.steer_harmless.name},
    }
    timings["steering_check"] = time.perf_counter() - t0

    layer_map = build_layer_map(metrics, base=pair.base, finetuned=pair.finetuned, k=config.k,
                                lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
    layer_map.save(folder / "layer_map.json")
    table = per_layer_table(metrics, layer_map)
    atomic_write_text(folder / "layer_table.md", table + "\n")
    atomic_write_json(folder / "metrics.json", {
        "config": asdict(config), "per_layer": {k: [None if not np.isfinite(x) else float(x) for x in v]
                                                for k, v in metrics.items()},
        "scores": {"finetuned": float(sweep["score_finetuned"]), "base": float(sweep["score_base"])},
        "steering": steering, "selected_layers": layer_map.selected_layers, "seconds": timings,
        "prompts": {name: {"name": p.name, "n": len(p), "hash": p.hash} for name, p in vars(prompts).items()},
    })
    log(f"analyze: selected layers {layer_map.selected_layers}; wrote {folder}")
    return AnalysisResult(metrics=metrics, layer_map=layer_map, steering=steering, folder=folder)


@dataclass
class RunData:
    """What ``analyze`` wrote, read back: per-layer metrics, the layer map, the steering check."""

    folder: Path
    metrics: dict[str, np.ndarray]
    layer_map: LayerMap
    steering: dict

    def activations(self, role: str, kind: str) -> Activations:
        """``role`` is ``base`` or ``ft``; ``kind`` is ``harmful``, ``harmless`` or ``task``."""
        return Activations.load(self.folder / "activations" / f"{role}-{kind}")

    def report(self) -> dict:
        """``report.json`` written by the restoration study (``interp run`` / ``run_study``)."""
        import json

        path = self.folder / "report.json"
        if not path.exists():
            raise ConfigError(f"{self.folder} has no report.json; run the restoration study (`interp run`) first")
        return json.loads(path.read_text())

    def refusal_vectors(self) -> np.ndarray:
        """The base model's difference-in-means refusal vectors ``[layer, d_model]`` (last position)."""
        from .directions import DiffInMeans

        harmful, harmless = (self.activations("base", k).tensor[:, :, -1].numpy() for k in ("harmful", "harmless"))
        labels = np.r_[np.ones(len(harmful)), np.zeros(len(harmless))]
        return DiffInMeans().fit(np.concatenate([harmful, harmless]), labels).diff_

    def pca(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Harmful and harmless prompts at ``layer`` projected on the base's top two principal
        components: ``(base [sample, 2], fine-tuned [sample, 2], labels [sample])``."""
        from .compare import pca_2d

        kinds = ("harmful", "harmless")
        acts = {role: np.concatenate([self.activations(role, k).at(layer).numpy() for k in kinds])
                for role in ("base", "ft")}
        labels = np.concatenate([self.activations("base", k).labels for k in kinds]).astype(int)
        return (*pca_2d(acts["base"], acts["ft"]), labels)


def load_run(folder: str | Path) -> RunData:
    import json

    folder = Path(folder)
    if not (folder / "metrics.json").exists():
        raise ConfigError(f"{folder} is not an analysis run folder (no metrics.json); run `interp analyze` first")
    data = json.loads((folder / "metrics.json").read_text())
    metrics = {k: np.array([np.nan if x is None else x for x in v], dtype=float) for k, v in data["per_layer"].items()}
    return RunData(folder, metrics, LayerMap.load(folder / "layer_map.json"), data["steering"])


def write_figures(run: RunData, out: str | Path) -> list[Path]:
    """Every analysis figure of ``run`` as PNG and SVG in ``out``."""
    import matplotlib.pyplot as plt

    from . import plots
    from .ranking import score_components

    selected = run.layer_map.selected_layers
    figures = {
        "probe_accuracy": plots.plot_probe_accuracy(run.metrics, selected),
        "refusal_direction": plots.plot_refusal_direction(run.metrics, selected),
        "amplification": plots.plot_amplification(run.metrics, selected),
        "causal_effects": plots.plot_causal_effects(run.metrics, selected),
        "ranking": plots.plot_ranking(run.layer_map.scores, score_components(run.metrics), selected),
    }
    layer = run.layer_map.ranked_layers[0]
    figures["pca"] = plots.plot_pca(*run.pca(layer), layer)
    paths = []
    for name, fig in figures.items():
        paths += plots.save_figure(fig, out, name)
        plt.close(fig)
    return paths
