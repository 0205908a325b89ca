"""Intervals and paired tests for rates measured on prompts.

**Wilson score interval** (Wilson 1927) for ``k`` successes in ``n`` trials, ``p = k / n``, ``z = 1.96``
for 95%:

    (p + z^2 / 2n  -/+  z * sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

It stays inside [0, 1] and keeps its coverage near 0% and 100%, where the normal interval fails.

**Exact McNemar test** for two models judged on the same prompts: of the ``b + c`` discordant prompts,
``b`` are positive for the first model only and ``c`` for the second only. Under the null hypothesis
(equal rates) each discordant prompt falls either way with probability 1/2, so the two-sided p-value is
``min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``; prompts both models judge alike carry no
information about the difference.

**Several samples per prompt.** With ``k`` sampled answers per prompt, a prompt's outcome is the share
of its samples judged positive (``m_i`` in [0, 1]) and the rate is ``p = mean_i m_i``. Samples of one
prompt are not independent, so the interval is Wilson's with the effective number of trials
(Kish's design effect): ``n_eff = p (1 - p) / Var(p)``, ``Var(p) = sum_i (m_i - p)^2 / (n (n - 1))``,
clamped to ``[n, n k]`` (no fewer trials than prompts, no more than samples); where every prompt's samples
agree the interval is Wilson's over the ``n`` prompts. Paired tests on such outcomes use the paired
sign-flip test: under the null hypothesis each prompt's difference ``d_i = a_i - b_i`` is as likely
negated, so the p-value is the share of random sign flips (fixed seed; the observed signs counted as one
of them, so it is never 0) whose ``|sum d|`` reaches the observed one; on 0/1 outcomes this is
McNemar's test, which is then computed exactly.

**Paired bootstrap interval** of a margin ``mean(a) - factor * mean(b) - offset`` over the same prompts:
prompts are resampled with replacement (the same draw for ``a`` and ``b``, so the pairing is kept),
``resamples`` times with a fixed seed, and the 2.5th and 97.5th percentiles of the margin are reported.

**Holm's correction** (Holm 1979) of ``m`` p-values for the family-wise error rate: sorted ascending,
the ``i``-th (from 0) is multiplied by ``m - i``, made non-decreasing along the order and capped at 1;
a hypothesis is rejected at level ``alpha`` when its adjusted p is at most ``alpha``. It controls the
chance of any false rejection under any dependence between the tests.

**Rank test over seeds** (``rank_sum_p``): per seed, the rank of one plan among itself and ``n - 1``
random draws trained with that seed (1 = highest; ties count against the plan, ``rank_among``). If the
plan is exchangeable with the draws, each rank is uniform on ``1..n`` and independent across seeds; the
p-value is the exact probability that the sum of the ranks is at most the observed sum (by convolution).
With one seed it is ``rank / n``: above all 19 draws, p = 0.05.

**Mixed estimate over seeds, draws and prompts** (``mixed_difference``): the mean over seeds of one
plan's rate minus the mean rate of that seed's random draws; its 95% interval is the percentile
bootstrap that resamples seeds, then each seed's draws, then prompts (the same prompts for the plan and
the draws of a resample), so seed-to-seed, draw-to-draw and prompt noise all widen it.

**Matched over-refusal** (``matched_refusal``): a threshold on the refusal score that makes a model
refuse a given share of safe prompts (the base's judged over-refusal), and the share of harmful prompts
it refuses at that threshold: the ROC curve of harmful vs safe prompts read at one false-positive rate.

**AUROC** of a score against 0/1 labels: the probability that a random positive scores above a random
negative, ties counted half (the Mann-Whitney U statistic over ``n_pos * n_neg``); its 95% interval is
the percentile bootstrap over items (``bootstrap_interval``).

**Spearman's rho** (``spearman``): Pearson's correlation of the two variables' average ranks (ties share
their mean rank); NaN where either is constant. Its interval here is the percentile bootstrap over items
(``bootstrap_interval``: layers, for a score against a per-layer ground truth).

**Agreement with labels** (``label_agreement``): precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``
and Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` (``p_o`` the share of items where judge and label agree,
``p_e`` the agreement their marginal rates give by chance), each with a percentile bootstrap interval
over items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

Z95 = 1.959963984540054


def wilson_interval(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (effective, possibly fractional,
    counts allowed: ``rate_interval``)."""
    if n < 1 or not 0 <= k <= n + 1e-9:
        raise ConfigError(f"wilson_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = min(k / n, 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_interval(values: Sequence[float], samples: int = 1) -> tuple[float, float]:
    """The 95% interval of the rate behind per-prompt outcomes: Wilson's over prompts for 0/1 outcomes,
    with the effective number of trials for shares of ``samples`` samples (module docstring)."""
    if not len(values):
        raise ConfigError("rate_interval needs at least one prompt")
    m = np.asarray(values, dtype=float)
    n = len(m)
    if np.isin(m, (0.0, 1.0)).all():
        return wilson_interval(int(m.sum()), n)
    p = float(m.mean())
    variance = float(((m - p) ** 2).sum()) / (n * (n - 1)) if n > 1 else 0.0
    n_eff = n * samples if variance == 0 else min(max(p * (1 - p) / variance, n), n * samples)
    return wilson_interval(p * n_eff, n_eff)


def discordant(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """``(b, c)``: prompts where ``a`` is higher and where ``b`` is (for 0/1 outcomes: positive for
    ``a`` only and for ``b`` only)."""
    _check_paired(a, b)
    only_a = sum(1 for x, y in zip(a, b) if x > y)
    only_b = sum(1 for x, y in zip(a, b) if y > x)
    return only_a, only_b


def paired_p_value(a: Sequence[float], b: Sequence[float], *, flips: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of "equal rates" on paired outcomes: exact McNemar on 0/1 outcomes, the paired
    sign-flip test on shares of samples (module docstring)."""
    _check_paired(a, b)
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.isin(d, (-1.0, 0.0, 1.0)).all():
        return mcnemar_exact(*discordant(a, b))
    d = d[d != 0]
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(flips, len(d)))
    observed = abs(d.sum())
    hits = int((np.abs(signs @ d) >= observed - 1e-12).sum())
    return (hits + 1) / (flips + 1)  # the observed signs count as one draw: never 0


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    factor: float = 1.0,
    offset: float = 0.0,
    resamples: int = 4000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of ``mean(a) - factor * mean(b) - offset`` under paired resampling."""
    _check_paired(a, b)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    margins = x[draws].mean(1) - factor * y[draws].mean(1) - offset
    low, high = np.percentile(margins, [2.5, 97.5])
    return float(low), float(high)


def _check_paired(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b) or not len(a):
        raise ConfigError(f"paired outcomes need the same, non-zero number of prompts: {len(a)} vs {len(b)}")


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The AUROC of ``scores`` against 0/1 ``labels`` (module docstring); NaN without both classes."""
    x, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    if len(x) != len(y):
        raise ConfigError(f"auroc needs one label per score, got {len(x)} scores and {len(y)} labels")
    positive, negative = x[y], x[~y]
    if not len(positive) or not len(negative):
        return math.nan
    ranks = _average_ranks(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (module docstring)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) != len(b) or len(a) < 2:
        raise ConfigError(f"spearman needs two sequences of one length >= 2, got {len(a)} and {len(b)}")
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    ra, rb = _average_ranks(a) - (len(a) + 1) / 2, _average_ranks(b) - (len(b) + 1) / 2
    scale = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / scale) if scale > 0 else math.nan


def bootstrap_interval(statistic, *columns: Sequence, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of ``statistic(*columns)``, items (rows of the columns)
    resampled with replacement; resamples where the statistic is undefined (NaN) are left out."""
    arrays = [np.asarray(c) for c in columns]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ConfigError("bootstrap_interval needs columns of one non-zero length")
    rng = np.random.default_rng(seed)
    values = [statistic(*(a[index] for a in arrays)) for index in rng.integers(0, n, (resamples, n))]
    values = np.asarray([v for v in values if v == v])
    if not len(values):
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def precision(decisions: Sequence[int], labels: Sequence[int]) -> float:
    d, y = np.asarray(decisions, dtype=bool), np.asarray(labels, dtype=bool)
    return float((d & y).sum() / d.sum()) if d.sum() else math.nan


def recall(decisions: Sequence[int], labels: Sequence[int]) -> float:
    d, y = np.asarray(decisions, dtype=bool), np.asarray(labels, dtype=bool)
    return float((d & y).sum() / y.sum()) if y.sum() else math.nan


def cohen_kappa(decisions: Sequence[int], labels: Sequence[int]) -> float:
    """Cohen's kappa of two 0/1 raters (module docstring); NaN when chance agreement is 1."""
    d, y = np.asarray(decisions, dtype=bool), np.asarray(labels, dtype=bool)
    observed = float((d == y).mean())
    expected = float(d.mean() * y.mean() + (1 - d.mean()) * (1 - y.mean()))
    return math.nan if expected >= 1 else (observed - expected) / (1 - expected)


def label_agreement(decisions: Sequence[int], labels: Sequence[int], seed: int = 0) -> dict:
    """Precision, recall and kappa of 0/1 ``decisions`` against 0/1 ``labels``, each ``(value, (low,
    high))`` with its bootstrap interval, and ``n`` and the number of positive labels."""
    out = {"n": len(labels), "positives": int(np.sum(labels))}
    for name, statistic in (("precision", precision), ("recall", recall), ("kappa", cohen_kappa)):
        out[name] = (statistic(decisions, labels), bootstrap_interval(statistic, decisions, labels, seed=seed))
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values in the input order (module docstring)."""
    p = np.asarray(p_values, dtype=float)
    if np.isnan(p).any() or ((p < 0) | (p > 1)).any():
        raise ConfigError("holm needs p-values in [0, 1]")
    order = np.argsort(p, kind="mergesort")
    adjusted = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    out = np.empty(len(p))
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def rank_among(value: float, others: Sequence[float]) -> int:
    """1 + the number of ``others`` at or above ``value`` (ties count against ``value``)."""
    return 1 + sum(other >= value for other in others)


def rank_sum_p(ranks: Sequence[int], n: int) -> float:
    """P(sum of independent uniform ranks on 1..n <= sum(ranks)), exactly (module docstring)."""
    if n < 1 or not ranks or any(not 1 <= r <= n for r in ranks):
        raise ConfigError(f"rank_sum_p needs ranks in 1..{n}, got {list(ranks)}")
    distribution = np.zeros(1)
    distribution[0] = 1.0  # the sum of no ranks is 0
    for _ in ranks:
        distribution = np.convolve(distribution, np.full(n, 1.0 / n))  # index i: sum i + (count of ranks)
    observed = sum(ranks) - len(ranks)  # shift: each rank counted from 0
    return float(min(1.0, distribution[: observed + 1].sum()))


def matched_refusal(harmful: Sequence[float], safe: Sequence[float], safe_rate: float) -> tuple[float, float]:
    """``(threshold, harmful rate)``: the score threshold at which the share of ``safe`` scores above it is
    ``safe_rate`` (the empirical quantile), and the share of ``harmful`` scores above it."""
    if not 0 <= safe_rate <= 1 or not len(harmful) or not len(safe):
        raise ConfigError(f"matched_refusal needs scores of both sets and a rate in [0, 1], got {safe_rate}")
    threshold = float(np.quantile(np.asarray(safe, dtype=float), 1 - safe_rate))
    return threshold, float(np.mean(np.asarray(harmful, dtype=float) > threshold))


def rate_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """``y`` at ``x`` by linear interpolation along the points ``(xs, ys)`` sorted by ``xs`` (a strength
    sweep: harmful refusal at a given over-refusal); NaN outside the points' range."""
    order = np.argsort(np.asarray(xs, dtype=float), kind="mergesort")
    px, py = np.asarray(xs, dtype=float)[order], np.asarray(ys, dtype=float)[order]
    if not len(px) or x < px[0] or x > px[-1]:
        return math.nan
    return float(np.interp(x, px, py))


def mixed_difference(
    plan: Sequence[Sequence[float]], draws: Sequence[Sequence[Sequence[float]]], resamples: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """``(estimate, interval)`` of the plan's rate minus its draws' (module docstring): ``plan[seed][prompt]``
    and ``draws[seed][draw][prompt]`` per-prompt outcomes."""
    estimate, values = mixed_samples(plan, draws, resamples, seed)
    low, high = np.percentile(values, [2.5, 97.5])
    return estimate, (float(low), float(high))


def mixed_samples(
    plan: Sequence[Sequence[float]], draws: Sequence[Sequence[Sequence[float]]], resamples: int = 2000, seed: int = 0
) -> tuple[float, np.ndarray]:
    """The estimate of ``mixed_difference`` and its ``resamples`` bootstrap values (one-sided tests read
    them: the share at or below a margin)."""
    x = np.asarray(plan, dtype=float)  # [seed, prompt]
    d = np.asarray(draws, dtype=float)  # [seed, draw, prompt]
    if x.ndim != 2 or d.ndim != 3 or d.shape[0] != x.shape[0] or d.shape[2] != x.shape[1] or d.shape[1] < 1:
        raise ConfigError(f"mixed_difference needs [seed, prompt] and [seed, draw, prompt], got {x.shape}, {d.shape}")
    estimate = float((x.mean(1) - d.mean(2).mean(1)).mean())
    rng = np.random.default_rng(seed)
    n_seeds, n_draws, n_prompts = d.shape
    values = np.empty(resamples)
    for r in range(resamples):
        seeds = rng.integers(0, n_seeds, n_seeds)
        picked = rng.integers(0, n_draws, (n_seeds, n_draws))
        prompts = rng.integers(0, n_prompts, n_prompts)
        ours = x[seeds][:, prompts].mean(1)
        theirs = d[seeds[:, None], picked][:, :, prompts].mean(2).mean(1)
        values[r] = (ours - theirs).mean()
    return estimate, values
