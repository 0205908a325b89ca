"""Rank layers by where fine-tuning suppressed safety, and export a layer map that configures restoration.

The per-layer score asks which *blocks* did the suppressing. Suppression, causal restoration and task
amplification measured on the residual stream after block ``l`` are cumulative: whatever block ``k``
changes shows up at every later layer too. So each signal enters the score as its increment over the
previous layer (its positive part, what block ``l`` itself added), scaled by its maximum over layers:

    lost_l    = (separation_base_l - separation_finetuned_l) / max_l |separation_base_l|
    patch_l   = patch_effect_l / max_l |patch_effect_l|         (0 where the sweep skipped layer l)
    amp_l     = task_amplification_l - 1
    inc(x)_l  = max(0, x_l - x_{l-1}),  x_{-1} = 0;   unit(v) = v / max(v)  (0 if v is all 0)
    score_l   = w_suppression * unit(inc(lost))_l + w_causal * unit(inc(patch))_l
                + w_amplification * unit(inc(amp))_l

with weights 0.45 / 0.35 / 0.20 by default. The top ``k`` layers are selected for LoRA; restoration
aligns hidden states at the selected layers and at the last layer.

**Spread** (``score_spread``): the score recomputed on bootstrap resamples of the prompts (harmful,
harmless and task prompts resampled separately, each prompt's base and fine-tuned activations together;
the causal sweep's prompts resampled for ``patch``; the base refusal direction held at its estimate), with
each resample's own maxima: per layer the 95% percentile interval of ``score_l`` and the share of
resamples in which ``l`` is among the top ``k``, and the share in which the top ``k`` is the map's set.
Every ``unit()`` divides by a maximum that is itself estimated, so a term of noise size can move a layer
in or out of the top ``k``; this is how much it does.

The map also carries a suggested LoRA rank and alpha; restoration takes its own (``RestoreConfig``),
so changing them never reruns the analysis.

**Version 2** names the places to restore as ``entries``: ``{"layer": 20, "modules": ["o_proj"]}`` per
selected layer, so a map can say "attention output of block 20, MLP of block 26" rather than whole blocks
(``to_lora_config`` then targets only those modules). A version 1 map (no entries: every
``target_modules`` module of each selected layer) still loads, and is saved as version 2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..core.models import LINEAR_MODULES
from ..errors import LayerMapError
from ..io.atomic import atomic_write_json
from .causal import CausalSweep
from .compare import PairActivations, PairMetrics, base_refusal_directions

LAYER_MAP_VERSION = 2
READABLE_VERSIONS = (1, 2)
KNOWN_MODULES = LINEAR_MODULES
DEFAULT_WEIGHTS = {"suppression": 0.45, "causal": 0.35, "amplification": 0.20}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number_list(values, n: int, finite: bool = True) -> bool:
    """A list of ``n`` numbers (JSON ``null`` allowed for a metric a sweep skipped, when not ``finite``)."""
    if not isinstance(values, list) or len(values) != n:
        return False
    for v in values:
        if v is None and not finite:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or (finite and not math.isfinite(v)):
            return False
    return True


def _increment(values: np.ndarray) -> np.ndarray:
    """``max(0, x_l - x_{l-1})`` along the last axis (``x_{-1} = 0``; NaN read as 0)."""
    values = np.nan_to_num(np.asarray(values, dtype=float))
    return np.maximum(0.0, np.diff(values, axis=-1, prepend=0.0))


def _unit(values: np.ndarray) -> np.ndarray:
    """``v / max(v)`` along the last axis (0 where the maximum is not above 0)."""
    if values.shape[-1] == 0:
        return values
    top = values.max(axis=-1, keepdims=True)
    return np.where(top > 0, values / np.where(top > 0, top, 1.0), 0.0)


def _terms(sep_base: np.ndarray, sep_ft: np.ndarray, patch: np.ndarray, amp: np.ndarray) -> dict[str, np.ndarray]:
    """The score's three terms (module docstring) from ``[..., layer]`` arrays (``amp``: the ratio)."""
    scale = lambda x: np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-12)  # noqa: E731
    lost = (sep_base - sep_ft) / scale(sep_base)
    patch = np.nan_to_num(patch)
    return {
        "suppression": _unit(_increment(lost)),
        "causal": _unit(_increment(patch / scale(patch))),
        "amplification": _unit(_increment(amp - 1.0)),
    }


def score_components(metrics: PairMetrics, sweep: CausalSweep | None = None) -> dict[str, np.ndarray]:
    """The three per-layer components of the score, each in [0, 1] (module docstring)."""
    sep_base = np.asarray(metrics.separation_base, dtype=float)
    patch = np.zeros_like(sep_base) if sweep is None else np.asarray(sweep.patch_effect, dtype=float)
    sep_ft, amp = (np.asarray(x, dtype=float) for x in (metrics.separation_finetuned, metrics.task_amplification))
    return _terms(sep_base, sep_ft, patch, amp)


def layer_scores(
    metrics: PairMetrics, sweep: CausalSweep | None = None, weights: dict[str, float] = DEFAULT_WEIGHTS
) -> np.ndarray:
    """The documented per-layer score (module docstring) from ``compare`` and ``causal_sweep``."""
    return sum(weights[name] * part for name, part in score_components(metrics, sweep).items())


@dataclass
class ScoreSpread:
    """The score's spread over prompt resamples (module docstring, **Spread**); lists are ``[layer]``."""

    k: int
    resamples: int
    score: list[float]  # the point estimate: the map's scores, from the same prompts
    low: list[float]  # 2.5th percentile of score_l
    high: list[float]  # 97.5th percentile
    top_k_share: list[float]  # share of resamples with l among the top k
    same_top_k: float  # share of resamples whose top k is the point estimate's
    n_prompts: dict[str, int]  # harmful, harmless, task, causal (0: no per-prompt sweep, patch held fixed)

    def __post_init__(self) -> None:
        n = len(self.score)
        if not 1 <= self.k <= n or any(len(getattr(self, f)) != n for f in ("low", "high", "top_k_share")):
            raise LayerMapError(f"a score spread needs k in 1..{n} and {n} values per list")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScoreSpread:
        return cls(**data)


def score_spread(
    acts: PairActivations,
    sweep: CausalSweep | None,
    k: int = 3,
    weights: dict[str, float] = DEFAULT_WEIGHTS,
    resamples: int = 1000,
    seed: int = 0,
) -> ScoreSpread:
    """The layer score on ``resamples`` bootstrap resamples of the prompts (module docstring, **Spread**).
    ``acts`` are the analysis's activations at the last prompt token; ``sweep.patch_by_prompt`` supplies the
    causal term per prompt (without it, the term is held at ``sweep.patch_effect``)."""
    if not 1 <= k <= acts.n_layers:
        raise LayerMapError(f"k must be between 1 and {acts.n_layers}, got {k}")
    u = base_refusal_directions(acts).directions_  # [layer, d_model], held at its estimate
    along = {(role, kind): np.einsum("nld,ld->nl", getattr(acts, f"{role}_{kind}"), u)
             for role in ("base", "ft") for kind in ("harmful", "harmless")}  # fmt: skip
    flat = {(role, kind): getattr(acts, f"{role}_{kind}").reshape(len(getattr(acts, f"{role}_{kind}")), -1)
            for role in ("base", "ft") for kind in ("task", "harmless")}  # fmt: skip
    by_prompt = None if sweep is None else sweep.patch_by_prompt
    fixed = np.zeros(acts.n_layers) if sweep is None else np.asarray(sweep.patch_effect, dtype=float)
    sizes = {"harmful": len(acts.base_harmful), "harmless": len(acts.base_harmless), "task": len(acts.base_task),
             "causal": 0 if by_prompt is None else len(by_prompt)}  # fmt: skip

    def scores(w: dict[str, np.ndarray]) -> np.ndarray:
        """``[draw, layer]`` scores for prompt weights ``w[kind]`` ``[draw, n_kind]`` (rows sum to 1)."""
        separation = {role: w["harmful"] @ along[role, "harmful"] - w["harmless"] @ along[role, "harmless"]
                      for role in ("base", "ft")}  # fmt: skip
        norm = {role: np.linalg.norm((w["task"] @ flat[role, "task"] - w["harmless"] @ flat[role, "harmless"])
                                     .reshape(len(w["task"]), acts.n_layers, -1), axis=-1)
                for role in ("base", "ft")}  # fmt: skip
        patch = fixed[None] if by_prompt is None else w["causal"] @ np.nan_to_num(by_prompt)
        terms = _terms(separation["base"], separation["ft"], patch, norm["ft"] / np.maximum(norm["base"], 1e-12))
        return sum(weights[name] * part for name, part in terms.items())

    rng = np.random.default_rng(seed)
    drawn = scores({kind: rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) / n
                    for kind, n in sizes.items() if n})  # fmt: skip
    point = scores({kind: np.full((1, n), 1.0 / n) for kind, n in sizes.items() if n})[0]
    top = np.argsort(-drawn, axis=-1, kind="stable")[:, :k]
    member = np.zeros(drawn.shape, dtype=bool)
    np.put_along_axis(member, top, True, axis=-1)
    chosen = set(np.argsort(-point, kind="stable")[:k].tolist())
    low, high = np.percentile(drawn, [2.5, 97.5], axis=0)
    return ScoreSpread(k=k, resamples=resamples, score=point.tolist(), low=low.tolist(), high=high.tolist(),
                       top_k_share=member.mean(0).tolist(),
                       same_top_k=float(np.mean([set(row.tolist()) == chosen for row in top])),
                       n_prompts=sizes)  # fmt: skip


@dataclass
class LayerMap:
    """Which layers to restore and how; saved as versioned JSON."""

    base_model: str
    finetuned_model: str
    base_fingerprint: str
    finetuned_fingerprint: str
    n_layers: int
    scores: list[float]
    ranked_layers: list[int]
    selected_layers: list[int]
    alignment_layers: list[int]
    target_modules: list[str] = field(default_factory=lambda: list(KNOWN_MODULES))
    lora_rank: int = 8  # a suggestion; restoration uses RestoreConfig.rank
    lora_alpha: int = 16  # a suggestion; restoration uses RestoreConfig.alpha
    score_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    metrics: dict[str, list[float]] = field(default_factory=dict)
    version: int = LAYER_MAP_VERSION
    # [{"layer": l, "modules": [...]}] per selected layer; None: every target module of each selected layer
    entries: list[dict] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        if self.version not in READABLE_VERSIONS:
            readable = ", ".join(map(str, READABLE_VERSIONS))
            raise LayerMapError(f"layer map version {self.version!r} is not supported (readable: {readable})")
        for name in ("base_model", "finetuned_model", "base_fingerprint", "finetuned_fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise LayerMapError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not _is_int(self.n_layers) or self.n_layers < 1:
            raise LayerMapError(f"n_layers must be a positive integer, got {self.n_layers!r}")
        for name in ("ranked_layers", "selected_layers", "alignment_layers"):
            layers = getattr(self, name)
            if not isinstance(layers, list) or not layers:
                raise LayerMapError(f"{name} must be a non-empty list of layer indices")
            bad = [l for l in layers if not _is_int(l) or not 0 <= l < self.n_layers]
            if bad:
                raise LayerMapError(f"{name} has layers out of range 0..{self.n_layers - 1}: {bad}")
            if len(set(layers)) != len(layers):
                raise LayerMapError(f"{name} repeats a layer: {layers}")
        if len(self.ranked_layers) != self.n_layers or sorted(self.ranked_layers) != list(range(self.n_layers)):
            raise LayerMapError("ranked_layers must list every layer exactly once")
        if not _is_number_list(self.scores, self.n_layers):
            raise LayerMapError(f"scores must be {self.n_layers} finite numbers, one per layer")
        if not isinstance(self.target_modules, list) or not self.target_modules:
            raise LayerMapError("target_modules must be a non-empty list of module names")
        unknown = [m for m in self.target_modules if not isinstance(m, str) or m not in KNOWN_MODULES]
        if unknown:
            raise LayerMapError(f"unknown target modules {unknown}; known: {', '.join(KNOWN_MODULES)}")
        for name in ("lora_rank", "lora_alpha"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise LayerMapError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.score_weights, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.score_weights.values()
        ):
            raise LayerMapError("score_weights must map names to numbers")
        if self.entries is None:
            self.entries = [{"layer": layer, "modules": list(self.target_modules)} for layer in self.selected_layers]
        self.version = LAYER_MAP_VERSION
        self._check_entries()
        if not isinstance(self.metrics, dict):
            raise LayerMapError("metrics must be an object of per-layer lists")
        for name, values in self.metrics.items():
            if not _is_number_list(values, self.n_layers, finite=False):
                raise LayerMapError(f"metric {name!r} must have one number per layer ({self.n_layers})")

    def _check_entries(self) -> None:
        if not isinstance(self.entries, list) or not self.entries:
            raise LayerMapError('entries must be a non-empty list of {"layer": ..., "modules": [...]}')
        for entry in self.entries:
            if not isinstance(entry, dict) or set(entry) != {"layer", "modules"}:
                raise LayerMapError(f"an entry must have exactly 'layer' and 'modules', got {entry!r:.80}")
            modules = entry["modules"]
            if not isinstance(modules, list) or not modules or len(set(modules)) != len(modules):
                raise LayerMapError(f"entry for layer {entry['layer']!r}: modules must be a non-empty list, no repeats")
            unknown = [m for m in modules if m not in self.target_modules]
            if unknown:
                raise LayerMapError(f"entry for layer {entry['layer']!r}: modules {unknown} not in target_modules")
        layers = [entry["layer"] for entry in self.entries]
        if sorted(layers) != sorted(self.selected_layers) or len(set(layers)) != len(layers):
            raise LayerMapError(f"entries name layers {layers}, but the selected layers are {self.selected_layers}")

    @property
    def modules(self) -> dict[int, list[str]]:
        """Selected layer -> the modules restoration puts LoRA on there."""
        return {entry["layer"]: list(entry["modules"]) for entry in sorted(self.entries, key=lambda e: e["layer"])}

    def check_model(self, model, role: str = "finetuned") -> None:
        """Raise if ``model`` (a ``LoadedModel``) is not the model this map was made for."""
        expected = self.finetuned_fingerprint if role == "finetuned" else self.base_fingerprint
        if model.n_layers != self.n_layers:
            raise LayerMapError(
                f"layer map is for a model with {self.n_layers} layers; {model.name} has {model.n_layers}"
            )
        if model.fingerprint != expected:
            raise LayerMapError(
                f"layer map was made for {role} model {expected} ({getattr(self, role + '_model')}), "
                f"not for {model.name} ({model.fingerprint}{', ' + model.dtype if hasattr(model, 'dtype') else ''}; "
                "a fingerprint covers the weights' bytes, so the same weights in another dtype are another model: "
                "load them as the map's were)"
            )

    # ---------------------------------------------------------------- io
    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data) -> LayerMap:
        if not isinstance(data, dict):
            raise LayerMapError(f"a layer map must be a JSON object, got {type(data).__name__}")
        if data.get("version") not in READABLE_VERSIONS:
            raise LayerMapError(
                f"layer map version {data.get('version')!r} is not supported "
                f"(readable: {', '.join(map(str, READABLE_VERSIONS))})"
            )
        if data.get("version") == 1 and "entries" in data:
            raise LayerMapError("a version 1 layer map has no entries (version 2 has)")
        names = set(cls.__dataclass_fields__)
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise LayerMapError(f"layer map is missing fields: {sorted(missing)}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise LayerMapError(f"layer map has unknown fields: {unknown}")
        try:
            return cls(**data)
        except TypeError as error:
            raise LayerMapError(f"layer map is malformed: {error}") from error

    @classmethod
    def load(cls, path: str | Path) -> LayerMap:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as error:
            raise LayerMapError(f"layer map not found: {path}") from error
        except json.JSONDecodeError as error:
            raise LayerMapError(f"layer map {path} is not valid JSON: {error}") from error
        return cls.from_dict(data)

    # ---------------------------------------------------------------- use
    def reranked(self, scores: Sequence[float], name: str, k: int | None = None) -> LayerMap:
        """The same map ranked by other per-layer ``scores`` (a candidate of ``interp.protocol.layers``,
        recorded as ``score_weights = {name: 1.0}``): the top ``k`` (default: as many as now) selected,
        aligned there and at the last layer; every selected layer restored whole."""
        scores = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
        k = len(self.selected_layers) if k is None else k
        if len(scores) != self.n_layers or not 1 <= k <= self.n_layers:
            raise LayerMapError(f"reranked: {len(scores)} scores and k={k} for a map of {self.n_layers} layers")
        ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
        selected = sorted(ranked[:k])
        return replace(self, scores=[float(s) if np.isfinite(s) else 0.0 for s in scores], ranked_layers=ranked,
                       selected_layers=selected, alignment_layers=sorted(set(selected) | {self.n_layers - 1}),
                       score_weights={name: 1.0}, entries=None)  # fmt: skip

    def to_lora_config(self, rank: int | None = None, alpha: int | None = None, layers=None, dropout: float = 0.0):
        """A peft ``LoraConfig`` with ``rank`` / ``alpha`` (default: the map's suggestion) that puts
        adapters on the map's entries: each selected layer's named modules only. ``layers`` instead puts
        them on every ``target_modules`` module of those layers (whole blocks: the baselines)."""
        modules = self.modules if layers is None else {layer: list(self.target_modules) for layer in layers}
        return lora_config(modules, rank or self.lora_rank, alpha or self.lora_alpha, dropout)


def lora_config(modules: dict[int, Sequence[str]], rank: int, alpha: int, dropout: float = 0.0):
    """A peft ``LoraConfig`` with adapters on ``modules`` (layer -> module names) and nowhere else: one
    module list with ``layers_to_transform`` when every layer names the same modules, else a regular
    expression over module names (peft matches it in full, e.g. ``model.layers.20.self_attn.o_proj``)."""
    from peft import LoraConfig

    common = dict(r=rank, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM")
    if len({tuple(sorted(names)) for names in modules.values()}) > 1:
        places = "|".join(rf"{layer}\.(?:[^.]+\.)*(?:{'|'.join(names)})" for layer, names in sorted(modules.items()))
        return LoraConfig(**common, target_modules=rf".*\blayers\.(?:{places})")
    return LoraConfig(
        **common,
        target_modules=list(next(iter(modules.values()))),
        layers_to_transform=sorted(modules),
        layers_pattern="layers",
    )


def manual_layer_map(base, finetuned, selected: Sequence[int], alignment: Sequence[int] | None = None) -> LayerMap:
    """A map chosen by hand, with no analysis behind it: ``selected`` ranked first (in that order), equal scores,
    aligned at ``alignment`` (default: the selected layers and the last). With every layer selected it
    serves recipes that put LoRA everywhere, such as the SafeReAct preset on a model studied alone."""
    n, selected = finetuned.n_layers, list(selected)
    return LayerMap(
        base_model=base.name,
        finetuned_model=finetuned.name,
        base_fingerprint=base.fingerprint,
        finetuned_fingerprint=finetuned.fingerprint,
        n_layers=n,
        scores=[0.0] * n,
        ranked_layers=selected + [layer for layer in range(n) if layer not in selected],
        selected_layers=sorted(selected),
        alignment_layers=sorted(set(selected) | {n - 1}) if alignment is None else sorted(set(alignment)),
    )


def build_layer_map(
    metrics: PairMetrics,
    sweep: CausalSweep | None,
    *,
    base,
    finetuned,
    k: int = 3,
    target_modules: list[str] | None = None,
    weights: dict[str, float] = DEFAULT_WEIGHTS,
) -> LayerMap:
    """Score layers, pick the top ``k`` and describe restoration for ``base``/``finetuned`` (LoadedModels)."""
    n_layers = finetuned.n_layers
    if not 1 <= k <= n_layers:
        raise LayerMapError(f"k must be between 1 and {n_layers}, got {k}")
    scores = layer_scores(metrics, sweep, weights)
    ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
    selected = sorted(ranked[:k])
    alignment = sorted(set(selected) | {n_layers - 1})
    per_layer = metrics.as_dict() | ({} if sweep is None else sweep.effects())
    clean = {
        name: [float(x) if np.isfinite(x) else None for x in np.asarray(v, dtype=float)]
        for name, v in per_layer.items()
    }
    return LayerMap(
        base_model=base.name,
        finetuned_model=finetuned.name,
        base_fingerprint=base.fingerprint,
        finetuned_fingerprint=finetuned.fingerprint,
        n_layers=n_layers,
        scores=[float(s) for s in scores],
        ranked_layers=ranked,
        selected_layers=selected,
        alignment_layers=alignment,
        target_modules=list(target_modules or KNOWN_MODULES),
        score_weights=dict(weights),
        metrics=clean,
    )
