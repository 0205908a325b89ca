"""A per-block score in natural units, each term with its interval: the ``evidence`` ranking.

The layer map's score (``interp.measures.layer_map``) scales every term by its own maximum, so a term of
noise size can decide the ranking. Here every term is an increment over the previous layer (what block
``l`` itself adds, as in the layer map), measured in its own units with a 95% percentile bootstrap
interval over prompts:

* ``causal``: the causal swap's increment, per prompt ``p``: ``c_{p,l} = patch_{p,l} - patch_{p,l-1}``
  (``patch_{p,-1} = 0``), in log-odds of a refusal opening (``CausalSweep.patch_by_prompt``); the term is
  ``mean_p c_{p,l}``. Prompts are resampled.
* ``suppression``: with the base's refusal direction ``u_l`` (difference in means, held at its estimate),
  each prompt's loss of projection ``d_p,l = (h_base - h_ft)_{p,l} . u_l``, and
  ``lost_l = mean_harmful d_l - mean_harmless d_l`` (the drop in the harmful-harmless separation); the term
  is ``lost_l - lost_{l-1}``. Harmful and harmless prompts are resampled separately.
* ``amplification``: ``amp_l = |mean task_ft - mean harmless_ft| / |mean task_base - mean harmless_base|
  - 1`` (the task direction's growth); the term is ``amp_l - amp_{l-1}``. Task and harmless prompts are
  resampled separately.

The score, in log-odds::

    evidence_l = causal_l + se_c * sum_{t in (suppression, amplification)} [low_{t,l} > 0] * z_{t,l}

with ``z = value / se`` (``se`` the bootstrap standard deviation) and ``se_c`` the median standard error
of the causal term over blocks: a representational term counts only at blocks where its interval lies
above zero, with the weight of as many causal standard errors as it has standard errors of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError
from .causal import CausalSweep
from .compare import PairActivations, base_refusal_directions

RESAMPLES = 1000


@dataclass
class Term:
    """One per-block term: its value, 95% bootstrap interval and standard error, each ``[layer]``."""

    name: str
    unit: str
    value: list[float]
    low: list[float]
    high: list[float]
    se: list[float]

    @property
    def above_zero(self) -> np.ndarray:
        return np.asarray(self.low) > 0

    @property
    def z(self) -> np.ndarray:
        se = np.asarray(self.se)
        return np.where(se > 0, np.asarray(self.value) / np.where(se > 0, se, 1.0), 0.0)


@dataclass
class Evidence:
    """The three terms and the ``evidence`` score (module docstring)."""

    causal: Term
    suppression: Term
    amplification: Term
    n_causal_prompts: int

    @property
    def score(self) -> np.ndarray:
        scale = float(np.median(self.causal.se))
        extra = sum(np.where(t.above_zero, t.z, 0.0) for t in (self.suppression, self.amplification))
        return np.asarray(self.causal.value) + scale * extra

    def to_dict(self) -> dict:
        return {**asdict(self), "score": self.score.tolist()}


def _increments(values: np.ndarray) -> np.ndarray:
    """``x_l - x_{l-1}`` along the last axis, ``x_{-1} = 0``."""
    return np.diff(values, axis=-1, prepend=0.0)


def _term(name: str, unit: str, point: np.ndarray, draws: np.ndarray) -> Term:
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return Term(name, unit, point.tolist(), low.tolist(), high.tolist(), draws.std(0, ddof=1).tolist())


def _weights(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[resample, n]`` bootstrap weights (counts / n): ``weights @ x`` is each resample's mean."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES) / n


def causal_term(sweep: CausalSweep, seed: int = 0) -> Term:
    """The causal increment per block (module docstring); needs ``sweep.patch_by_prompt`` at every layer."""
    by_prompt = sweep.patch_by_prompt
    if by_prompt is None or np.isnan(by_prompt).any():
        raise ConfigError("the evidence score needs a causal sweep kept per prompt, at every layer")
    inc = _increments(by_prompt)  # [prompt, layer]
    draws = _weights(len(inc), np.random.default_rng(seed)) @ inc
    return _term("causal", "log-odds", inc.mean(0), draws)


def suppression_term(acts: PairActivations, seed: int = 0) -> Term:
    """The increment of the lost harmful-harmless separation per block (module docstring)."""
    u = base_refusal_directions(acts).directions_  # [layer, d_model], unit
    lost = {kind: np.einsum("nld,ld->nl", getattr(acts, f"base_{kind}") - getattr(acts, f"ft_{kind}"), u)
            for kind in ("harmful", "harmless")}  # fmt: skip
    rng = np.random.default_rng(seed)
    draws = (
        _weights(len(lost["harmful"]), rng) @ lost["harmful"] - _weights(len(lost["harmless"]), rng) @ lost["harmless"]
    )
    point = lost["harmful"].mean(0) - lost["harmless"].mean(0)
    return _term("suppression", "residual units", _increments(point), _increments(draws))


def amplification_term(acts: PairActivations, seed: int = 0) -> Term:
    """The increment of the task direction's growth per block (module docstring)."""
    rng = np.random.default_rng(seed)
    w = {
        kind: _weights(len(acts.base_task if kind == "task" else acts.base_harmless), rng)
        for kind in ("task", "harmless")
    }

    def norm(role: str, resampled: bool) -> np.ndarray:  # [layer] or [resample, layer]
        task, harmless = getattr(acts, f"{role}_task"), getattr(acts, f"{role}_harmless")
        if not resampled:
            return np.linalg.norm(task.mean(0) - harmless.mean(0), axis=-1)
        flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
        diff = (w["task"] @ flat(task) - w["harmless"] @ flat(harmless)).reshape(RESAMPLES, *task.shape[1:])
        return np.linalg.norm(diff, axis=-1)

    point = norm("ft", False) / np.maximum(norm("base", False), 1e-12) - 1
    draws = norm("ft", True) / np.maximum(norm("base", True), 1e-12) - 1
    return _term("amplification", "ratio", _increments(point), _increments(draws))


def evidence(sweep: CausalSweep, acts: PairActivations, seed: int = 0) -> Evidence:
    """The ``evidence`` score and its terms from a per-prompt causal sweep and the pair's activations at
    the last prompt token."""
    if sweep.patch_by_prompt is not None and sweep.patch_by_prompt.shape[1] != acts.n_layers:
        raise ConfigError(f"the sweep has {sweep.patch_by_prompt.shape[1]} layers, the activations {acts.n_layers}")
    return Evidence(causal_term(sweep, seed), suppression_term(acts, seed), amplification_term(acts, seed),
                    len(sweep.patch_by_prompt))  # fmt: skip
