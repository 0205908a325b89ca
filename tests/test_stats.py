"""Statistics behind the audit and the protocol: AUROC, agreement with labels, Holm, the rank test over
seeds, matched over-refusal."""

import math

import numpy as np
import pytest

from interp.errors import ConfigError
from interp.evaluation.stats import auroc, cohen_kappa, label_agreement


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=60).round(1), rng.integers(0, 2, 60)
    pairs = [
        (s > t) + 0.5 * (s == t) for s, y in zip(scores, labels) if y for t, z in zip(scores, labels) if not z
    ]  # fmt: skip
    assert auroc(scores, labels) == pytest.approx(np.mean(pairs))
    assert math.isnan(auroc([1, 2], [1, 1]))


def test_label_agreement_on_planted_decisions():
    labels = [1] * 40 + [0] * 60
    perfect = label_agreement(labels, labels)
    assert perfect["kappa"][0] == 1 and perfect["precision"][0] == 1 and perfect["recall"][0] == 1
    half = [1] * 20 + [0] * 20 + [0] * 60  # finds half the positives, no false alarm
    got = label_agreement(half, labels)
    assert got["precision"][0] == 1 and got["recall"][0] == 0.5
    assert got["kappa"][0] == pytest.approx(cohen_kappa(half, labels))
    low, high = got["kappa"][1]
    assert low < got["kappa"][0] < high


def test_holm_matches_its_definition():
    from interp.evaluation.stats import holm

    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.2
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ConfigError):
        holm([0.1, float("nan")])


def test_mirrored_paired_tests_count_once_in_the_holm_family():
    from interp.evaluation.targets import PairedTest, with_holm

    def test(model, against, column, p):
        return PairedTest(model, against, column, 0.1, (0.0, 0.2), 3, 1, p)

    family = with_holm([test("a", "b", "harmful", 0.01), test("b", "a", "harmful", 0.01), test("a", "b", "task", 0.04)])
    assert [t.holm_p for t in family] == pytest.approx([0.02, 0.02, 0.04])


def test_rank_sum_p_is_exact():
    import itertools

    from interp.evaluation.stats import rank_among, rank_sum_p

    assert rank_among(0.8, [0.5, 0.8, 0.9]) == 3  # a tie counts against
    assert rank_sum_p([1], 20) == pytest.approx(0.05)
    ranks = [2, 1, 3]
    every = list(itertools.product(range(1, 6), repeat=3))
    assert rank_sum_p(ranks, 5) == pytest.approx(sum(sum(r) <= 6 for r in every) / len(every))
    with pytest.raises(ConfigError):
        rank_sum_p([0], 5)


def test_matched_refusal_reads_the_roc_at_the_safe_rate():
    from interp.evaluation.stats import matched_refusal, rate_at

    safe = np.arange(100) / 100  # 0.00 .. 0.99
    harmful = safe + 0.5
    threshold, rate = matched_refusal(harmful, safe, 0.10)  # 10% of safe prompts above the threshold
    assert np.mean(safe > threshold) == pytest.approx(0.10, abs=0.011)
    assert rate == pytest.approx(np.mean(harmful > threshold))
    assert rate_at([0.1, 0.3, 0.2], [0.5, 0.9, 0.7], 0.25) == pytest.approx(0.8)
    assert math.isnan(rate_at([0.1, 0.3], [0.5, 0.9], 0.5))


def test_mixed_difference_widens_with_draw_noise():
    from interp.evaluation.stats import mixed_difference

    rng = np.random.default_rng(0)
    plan = (rng.random((3, 200)) < 0.7).astype(float)
    quiet = (rng.random((3, 19, 200)) < 0.5).astype(float)
    rates = rng.uniform(0.2, 0.8, (3, 19, 1))  # draws that differ from each other
    noisy = (rng.random((3, 19, 200)) < rates).astype(float)
    estimate, (low, high) = mixed_difference(plan, quiet, resamples=500)
    assert estimate == pytest.approx(plan.mean() - quiet.mean()) and low < estimate < high
    _, (low2, high2) = mixed_difference(plan, noisy, resamples=500)
    assert high2 - low2 > high - low
    with pytest.raises(ConfigError):
        mixed_difference(plan, quiet[:2])
