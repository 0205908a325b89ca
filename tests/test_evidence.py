"""The evidence score: each term recovers a planted per-block change with an interval, and a representational
term enters the score only where its interval lies above zero."""

from __future__ import annotations

import numpy as np
import pytest

from interp.errors import ConfigError
from interp.measures.causal import CausalSweep
from interp.measures.compare import PairActivations
from interp.measures.evidence import amplification_term, causal_term, evidence, suppression_term

N_LAYERS, D = 5, 8


def _sweep(by_prompt: np.ndarray) -> CausalSweep:
    nan = np.full(N_LAYERS, np.nan)
    return CausalSweep(list(range(N_LAYERS)), nan, nan, by_prompt.mean(0), 0.0, 0.0, [1], patch_by_prompt=by_prompt)


def _acts(rng, lost_from: int | None = None, amplified_from: int | None = None, n: int = 60) -> PairActivations:
    """Harmful prompts sit +2 along axis 0 at every layer in the base; the fine-tuned model loses that
    separation from ``lost_from`` on. Task prompts sit +1 along axis 1; the fine-tuned model doubles it from
    ``amplified_from`` on. Noise 0.3 everywhere."""

    def noisy(shift: np.ndarray) -> np.ndarray:
        return shift + 0.3 * rng.standard_normal((n, N_LAYERS, D))

    harmful, task = np.zeros((N_LAYERS, D)), np.zeros((N_LAYERS, D))
    harmful[:, 0], task[:, 1] = 2.0, 1.0
    ft_harmful, ft_task = harmful.copy(), task.copy()
    if lost_from is not None:
        ft_harmful[lost_from:, 0] = 0.0
    if amplified_from is not None:
        ft_task[amplified_from:, 1] = 2.0
    zero = np.zeros((N_LAYERS, D))
    return PairActivations(noisy(harmful), noisy(zero), noisy(task), noisy(ft_harmful), noisy(zero), noisy(ft_task))


def test_the_causal_term_finds_the_block_that_adds_the_effect():
    rng = np.random.default_rng(0)
    effect = np.zeros((64, N_LAYERS))
    effect[:, 2:] = 1.0  # patching after block 2 or later restores 1 log-odds: block 2 adds it
    term = causal_term(_sweep(effect + 0.2 * rng.standard_normal(effect.shape)))
    assert term.value[2] == pytest.approx(1.0, abs=0.15) and term.low[2] > 0.5
    others = (0, 1, 3, 4)
    assert all(abs(term.value[layer]) < 0.2 and term.high[layer] < term.low[2] for layer in others)
    assert term.unit == "log-odds" and all(se > 0 for se in term.se)


def test_the_causal_term_needs_every_layer_per_prompt():
    effect = np.zeros((4, N_LAYERS))
    effect[:, 1] = np.nan
    with pytest.raises(ConfigError, match="per prompt"):
        causal_term(_sweep(effect))


def test_suppression_and_amplification_recover_their_planted_blocks():
    rng = np.random.default_rng(1)
    acts = _acts(rng, lost_from=3, amplified_from=1)
    lost, amp = suppression_term(acts), amplification_term(acts)
    assert np.flatnonzero(lost.above_zero).tolist() == [3] and lost.value[3] == pytest.approx(2.0, abs=0.2)
    assert np.flatnonzero(amp.above_zero).tolist() == [1] and amp.value[1] == pytest.approx(1.0, abs=0.2)


def test_a_representational_term_counts_only_where_significant():
    """Without a planted change the score is the causal term alone; with one, only its block moves, by its
    z times the causal term's median standard error."""
    rng = np.random.default_rng(2)
    sweep = _sweep(0.2 * rng.standard_normal((64, N_LAYERS)))
    plain = evidence(sweep, _acts(rng))
    assert not plain.suppression.above_zero.any() and not plain.amplification.above_zero.any()
    assert np.allclose(plain.score, plain.causal.value)
    found = evidence(sweep, _acts(rng, lost_from=3))
    moved = found.score - np.asarray(found.causal.value)
    assert np.flatnonzero(moved).tolist() == [3]
    assert moved[3] == pytest.approx(np.median(found.causal.se) * found.suppression.z[3])
    assert found.to_dict()["score"] == found.score.tolist()
