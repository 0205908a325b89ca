"""Per-layer comparison of a base and a fine-tuned model: what was suppressed, what was amplified.

Inputs are activations at one token position, ``[sample, layer, d_model]``, of both models on the same
harmful, harmless and task prompts. Every metric is a ``[layer]`` array:

* ``refusal_cosine``: cosine between the base's and the fine-tuned model's difference-in-means refusal
  directions (harmful minus harmless);
* ``separation_base`` / ``separation_finetuned``: mean projection of harmful minus harmless prompts
  onto the *base* refusal direction, in each model;
* ``retention``: ``separation_finetuned / separation_base`` (1 = intact, 0 = gone) and
  ``suppression = 1 - retention`` (clipped to [0, 1]);
* ``probe_acc_base`` / ``probe_acc_finetuned``: cross-validated harmful-vs-harmless probe accuracy in
  each model; ``probe_acc_transfer``: probes fit on the base, scored on the fine-tuned model;
* ``task_norm_base`` / ``task_norm_finetuned``: norm of the task direction (task minus harmless
  prompts) in each model; ``task_amplification`` is their ratio;
* ``harmful_task_pull_base`` / ``_finetuned``: where harmful prompts sit along the base task direction,
  in units of the base task separation (0 = like harmless prompts, 1 = like task prompts);
* ``harmful_shift``: relative L2 change of harmful-prompt activations, ``|h_ft - h_base| / |h_base|``,
  and ``harmful_cosine_shift``: ``1 - cos(h_base, h_ft)``, both averaged over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ..errors import ConfigError
from .directions import DiffInMeans, as_layers, cosine, separation
from .probes import LayerProbes


@dataclass
class PairActivations:
    """Activations of both models at one position: each ``[sample, layer, d_model]``."""

    base_harmful: np.ndarray
    base_harmless: np.ndarray
    base_task: np.ndarray
    ft_harmful: np.ndarray
    ft_harmless: np.ndarray
    ft_task: np.ndarray

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, as_layers(getattr(self, name)))
        for kind in ("harmful", "harmless", "task"):
            a, b = getattr(self, f"base_{kind}"), getattr(self, f"ft_{kind}")
            if a.shape != b.shape:
                raise ConfigError(f"{kind} activations differ in shape: base {a.shape} vs fine-tuned {b.shape}")
        layers = {getattr(self, n).shape[1:] for n in self.__dataclass_fields__}
        if len(layers) != 1:
            raise ConfigError(f"activation sets disagree on [layer, d_model]: {sorted(layers)}")

    @property
    def n_layers(self) -> int:
        return self.base_harmful.shape[1]


def _xy(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos), int), np.zeros(len(neg), int)])


@dataclass
class PairMetrics:
    """Every per-layer measure of ``compare`` (module docstring), each a ``[layer]`` array."""

    refusal_cosine: np.ndarray
    refusal_norm_base: np.ndarray
    refusal_norm_finetuned: np.ndarray
    separation_base: np.ndarray
    separation_finetuned: np.ndarray
    retention: np.ndarray
    suppression: np.ndarray
    probe_acc_base: np.ndarray
    probe_acc_finetuned: np.ndarray
    probe_acc_transfer: np.ndarray
    probe_auroc_base: np.ndarray
    probe_auroc_finetuned: np.ndarray
    probe_auroc_transfer: np.ndarray
    task_norm_base: np.ndarray
    task_norm_finetuned: np.ndarray
    task_amplification: np.ndarray
    harmful_task_pull_base: np.ndarray
    harmful_task_pull_finetuned: np.ndarray
    harmful_shift: np.ndarray
    harmful_cosine_shift: np.ndarray

    def __post_init__(self) -> None:
        lengths = {np.shape(getattr(self, f.name)) for f in fields(self)}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ConfigError(f"PairMetrics: every metric must be one [layer] array, got shapes {sorted(lengths)}")

    @property
    def n_layers(self) -> int:
        return len(self.refusal_cosine)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name), dtype=float) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> PairMetrics:
        return cls(
            **{f.name: np.array([np.nan if x is None else x for x in data[f.name]], dtype=float) for f in fields(cls)}
        )


def compare(acts: PairActivations, probe_seed: int = 0) -> PairMetrics:
    """All per-layer metrics (see module docstring)."""
    X_base, y = _xy(acts.base_harmful, acts.base_harmless)
    X_ft, _ = _xy(acts.ft_harmful, acts.ft_harmless)
    refusal_base = DiffInMeans().fit(X_base, y)
    refusal_ft = DiffInMeans().fit(X_ft, y)
    sep_base = separation(X_base, y, refusal_base.directions_)
    sep_ft = separation(X_ft, y, refusal_base.directions_)
    retention = sep_ft / np.where(np.abs(sep_base) > 1e-12, sep_base, np.nan)

    probes_base = LayerProbes(seed=probe_seed).fit(X_base, y)
    probes_ft = LayerProbes(seed=probe_seed).fit(X_ft, y)
    transfer = probes_base.score_layers(X_ft, y)

    task_base = DiffInMeans().fit(*_xy(acts.base_task, acts.base_harmless))
    task_ft = DiffInMeans().fit(*_xy(acts.ft_task, acts.ft_harmless))

    def pull(harmful: np.ndarray, harmless_mean: np.ndarray) -> np.ndarray:
        along = np.einsum("nld,ld->l", harmful - harmless_mean, task_base.directions_) / len(harmful)
        return along / np.maximum(task_base.norms_, 1e-12)

    delta = acts.ft_harmful - acts.base_harmful
    base_norm = np.linalg.norm(acts.base_harmful, axis=-1)
    cos_h = (acts.ft_harmful * acts.base_harmful).sum(-1) / np.maximum(
        base_norm * np.linalg.norm(acts.ft_harmful, axis=-1), 1e-12
    )
    return PairMetrics(
        **{
            "refusal_cosine": cosine(refusal_base.diff_, refusal_ft.diff_),
            "refusal_norm_base": refusal_base.norms_,
            "refusal_norm_finetuned": refusal_ft.norms_,
            "separation_base": sep_base,
            "separation_finetuned": sep_ft,
            "retention": retention,
            "suppression": np.clip(1 - retention, 0, 1),
            "probe_acc_base": probes_base.cv_accuracy_,
            "probe_acc_finetuned": probes_ft.cv_accuracy_,
            "probe_acc_transfer": transfer["accuracy"],
            "probe_auroc_base": probes_base.cv_auroc_,
            "probe_auroc_finetuned": probes_ft.cv_auroc_,
            "probe_auroc_transfer": transfer["auroc"],
            "task_norm_base": task_base.norms_,
            "task_norm_finetuned": task_ft.norms_,
            "task_amplification": task_ft.norms_ / np.maximum(task_base.norms_, 1e-12),
            "harmful_task_pull_base": pull(acts.base_harmful, task_base.mean_neg_),
            "harmful_task_pull_finetuned": pull(acts.ft_harmful, acts.ft_harmless.mean(0)),
            "harmful_shift": (np.linalg.norm(delta, axis=-1) / np.maximum(base_norm, 1e-12)).mean(0),
            "harmful_cosine_shift": (1 - cos_h).mean(0),
        }
    )


def base_refusal_directions(acts: PairActivations) -> DiffInMeans:
    """The base model's refusal direction finder (harmful vs harmless) fitted on ``acts``."""
    return DiffInMeans().fit(*_xy(acts.base_harmful, acts.base_harmless))


def pca_2d(base: np.ndarray, finetuned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``[sample, d_model]`` activations of both models onto the base's top two principal
    components (fit on the base, so both panels share axes)."""
    mean = base.mean(0)
    _, _, vt = np.linalg.svd(base - mean, full_matrices=False)
    return (base - mean) @ vt[:2].T, (finetuned - mean) @ vt[:2].T
