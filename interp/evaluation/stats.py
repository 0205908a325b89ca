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
