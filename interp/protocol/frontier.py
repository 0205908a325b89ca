"""The frontier on test: does the ranking place LoRA better than random at every budget ``k``, not only at 3?
(``interp protocol --frontier``.)

For each ``k`` in ``ks``: the ranking's top ``k`` blocks (``ranked:k``) and ``draws`` distinct random
``k``-sets from all blocks (none equal to the ranked set), every one aligned at the protocol's shared
layers and trained at every seed at the short budget, at the learning rates a protocol run with the same
ranking chose on dev (``lrs``: its ranked family's for the ranked plans, its draws' for the draws), and
judged on the test parts of the claim sets. Per ``k``:

* ``ranks``: per seed, the ranked plan's rank among itself and that seed's draws on judged harmful refusal
  (1 = highest; ties count against it), and the same at the base's over-refusal (``matched``);
* ``p``: the exact rank-sum p of those ranks (``interp.evaluation.stats.rank_sum_p``), Holm-adjusted over
  the ``k``s; ``estimate``: ranked - mean of the draws with its 95% interval (seeds, draws, then prompts
  resampled: ``mixed_difference``);
* ``percentile``: the share of draws whose seed-mean harmful refusal the ranked plan's seed mean exceeds;
  the issue's bar is 0.9 at every ``k``;
* ``degenerate``: how many (seed, draw) models are broken (``interp.protocol.claims.broken``: most harmful
  answers degenerate; a training broken at the draws' lr, which refuses nothing and solves nothing). They
  stay in the comparison, as the protocol fixes the draws' lr (amendment 8), and the report names them:
  they flatter the ranked plan;
* ``unbroken``: a reading beside the protocol's, not part of it (chosen after seed 0's broken draws were
  seen): the estimate, its interval and the percentile with every draw that is broken at any seed left out
  (``None`` when none is broken, or all are).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation.stats import holm, mixed_difference, rank_among, rank_sum_p
from ..evaluation.suite import EvalRow, EvalSuite
from ..io.atomic import atomic_write_json, atomic_write_text
from ..measures.layer_map import LayerMap
from ..report.tables import markdown_table
from ..study_plans import Plan, random_plans, ranked_plan
from ..training.restore_config import RestoreConfig, paper_alignment_layers
from .bench import Bench, claim_suite, safe_set, with_lr
from .claims import broken, matched
from .design import Protocol

KS = (1, 2, 3, 4, 5, 6, 7, 8)
DRAWS = 10


@dataclass
class Unbroken:
    """The ranked plan against the draws that are broken at no seed: a reading beside the protocol's."""

    draws: int  # how many draws are left
    estimate: float
    interval: tuple[float, float]
    percentile: float


@dataclass
class FrontierK:
    """One budget's result (module docstring)."""

    k: int
    ranked: list[int]
    ranks: dict[int, int]  # seed -> rank on judged harmful refusal
    matched_ranks: dict[int, int]  # seed -> rank at the base's over-refusal
    p: float
    holm_p: float
    estimate: float
    interval: tuple[float, float]
    percentile: float
    ranked_rate: float  # seed mean
    draws_rates: list[float]  # per draw: seed mean
    degenerate: int = 0  # (seed, draw) models whose harmful answers are mostly degenerate
    unbroken: Unbroken | None = None  # the same reading without the broken draws (module docstring)


def frontier_plans(layer_map: LayerMap, ks=KS, draws: int = DRAWS) -> dict[int, tuple[Plan, list[Plan]]]:
    """Per ``k``: the ranked plan and its draws, aligned at the shared layers (module docstring)."""
    shared = paper_alignment_layers(layer_map.n_layers)
    out = {}
    for k in ks:
        ranked = ranked_plan(layer_map, k)
        drawn = random_plans(layer_map, draws, seed=1000 * k, key=f"front:{k}", k=k, exclude=[ranked.layers])
        out[k] = (ranked.aligned_at(shared), [p.aligned_at(shared) for p in drawn])
    return out


def frontier_test(
    bench: Bench, suite: EvalSuite, lrs: dict[str, float], *, protocol: Protocol,
    restore: RestoreConfig = RestoreConfig(), ks=KS, draws: int = DRAWS, seeds=None,
    earlier: str | Path | None = None, folder: str | Path | None = None,
) -> list[FrontierK]:  # fmt: skip
    """Every ``k``'s plans at every seed, judged on the test parts; the per-``k`` comparison (module docstring).

    The study can run a few seeds at a time: ``seeds`` (default: the protocol's) are trained unless the
    folder ``earlier`` (a former run's output) holds their judged rows (``frontier_seed_<seed>.json``);
    the comparison uses every seed trained now or found there, and each one's rows are written to
    ``folder`` (``Bench.kept``). So a result travels with its folder, no cache needed. A seed file made with
    other plans, settings, models or prompts is one error, before any training."""
    test = claim_suite(suite, "test")
    safe = safe_set(test)
    plans = frontier_plans(bench.analysis.layer_map, ks, draws)
    order = [with_lr(p, lrs["ranked"]) if i == 0 else with_lr(p, lrs["draws"])
             for k in ks for i, p in enumerate([plans[k][0], *plans[k][1]])]  # fmt: skip
    seeds = list(protocol.seeds if seeds is None else seeds)
    if not set(seeds) <= set(protocol.seeds):
        raise ConfigError(f"--seeds {seeds}: the protocol's seeds are {list(protocol.seeds)}")
    configs = {seed: replace(restore, steps=protocol.budgets[0], seed=seed) for seed in protocol.seeds}
    bench.check_kept([(order, configs[s], test, f"frontier_seed_{s}") for s in protocol.seeds], earlier)
    by_seed = {}
    for seed, config in configs.items():
        rows = bench.kept(order, config, test, f"frontier_seed_{seed}", earlier=earlier, folder=folder,
                          run=seed in seeds, label=f"frontier, seed {seed}")  # fmt: skip
        if rows is not None:  # neither run now nor before: left out of the comparison (save_frontier names it)
            by_seed[seed] = (rows[0], dict(zip([p.key for p in order], rows[2:])))
    if not by_seed:
        raise ConfigError("the frontier has no seed to compare: give --seeds")
    results = []
    for k in ks:
        ranked, drawn = plans[k][0], plans[k][1]
        rkey, dkeys = f"{ranked.key}@{lrs['ranked']:g}", [f"{p.key}@{lrs['draws']:g}" for p in drawn]
        results.append(compare_k(k, list(ranked.layers), by_seed, rkey, dkeys, safe))
    for result, adjusted in zip(results, holm([r.p for r in results])):
        result.holm_p = adjusted
    return results


def compare_k(
    k: int, layers: list[int], by_seed: dict[int, tuple[EvalRow, dict[str, EvalRow]]], ranked: str,
    draws: list[str], safe: str,
) -> FrontierK:  # fmt: skip
    """One budget's comparison (module docstring; Holm left at 1 for the caller): ``by_seed`` maps a seed to
    its base row and its judged rows by plan key; ``ranked`` and ``draws`` are plan keys."""
    harm = {s: (_harmful(r[ranked]), [_harmful(r[d]) for d in draws]) for s, (_, r) in by_seed.items()}
    fit = {s: (matched(base, r[ranked], safe), [matched(base, r[d], safe) for d in draws])
           for s, (base, r) in by_seed.items()}  # fmt: skip
    ranks = {s: rank_among(np.mean(h), [np.mean(d) for d in ds]) for s, (h, ds) in harm.items()}
    matched_ranks = {s: rank_among(np.mean(h), [np.mean(d) for d in ds]) for s, (h, ds) in fit.items()}
    estimate, interval, percentile, ranked_rate, draws_rates = _against(harm, range(len(draws)))
    broken_at = [[broken(r[d]) for d in draws] for _, r in by_seed.values()]  # [seed, draw]
    kept = [i for i in range(len(draws)) if not any(seed[i] for seed in broken_at)]
    unbroken = None
    if 0 < len(kept) < len(draws):
        u_estimate, u_interval, u_percentile, _, _ = _against(harm, kept)
        unbroken = Unbroken(len(kept), u_estimate, u_interval, u_percentile)
    return FrontierK(
        k, layers, ranks, matched_ranks, rank_sum_p(list(ranks.values()), len(draws) + 1), 1.0, estimate,
        interval, percentile, ranked_rate, draws_rates, int(np.sum(broken_at)), unbroken,
    )  # fmt: skip


def _against(harm: dict, kept) -> tuple[float, tuple[float, float], float, float, list[float]]:
    """Ranked - the draws ``kept`` (indices): estimate, interval, percentile, the ranked seed mean and each
    kept draw's seed mean."""
    ranked = [h for h, _ in harm.values()]
    drawn = [[ds[i] for i in kept] for _, ds in harm.values()]
    estimate, interval = mixed_difference(ranked, drawn)
    ranked_rate = float(np.mean([np.mean(h) for h in ranked]))
    draws_rates = [float(np.mean([np.mean(ds[j]) for ds in drawn])) for j in range(len(kept))]
    return estimate, interval, float(np.mean([ranked_rate > d for d in draws_rates])), ranked_rate, draws_rates


def _harmful(row) -> list[float]:
    return [float(x) for x in row.outcomes["harmful"]]


def save_frontier(results: list[FrontierK], folder: str | Path, ranking: str, seeds=None) -> None:
    """``frontier_test.json`` and ``frontier_test.md`` in ``folder``; ``seeds``: the protocol's, to name those
    not in the comparison yet."""
    folder = Path(folder)
    done = sorted(results[0].ranks) if results else []
    missing = [s for s in (seeds or done) if s not in done]
    data = {"ranking": ranking, "seeds": done, "missing_seeds": missing, "ks": [asdict(r) for r in results]}
    atomic_write_json(folder / "frontier_test.json", data)
    partial = f" **Not run yet: {', '.join(map(str, missing))}** (`--seeds`); the verdicts below are partial."
    cells = [
        [str(r.k), str(r.ranked), ", ".join(str(v) for v in r.ranks.values()),
         ", ".join(str(v) for v in r.matched_ranks.values()), f"{100 * r.estimate:+.1f} [{100 * r.interval[0]:+.1f},"
         f" {100 * r.interval[1]:+.1f}]", f"{r.p:.3g} ({r.holm_p:.3g})", f"{r.percentile:.2f}",
         "yes" if r.percentile >= 0.9 else "no", f"{r.degenerate} of {len(r.ranks) * len(r.draws_rates)}",
         _unbroken_cell(r.unbroken)]
        for r in results
    ]  # fmt: skip
    head = ["k", "ranked layers", "rank per seed (harmful)", "rank per seed (at matched over-refusal)",
            "ranked - draws (points) [95% CI]", "p (Holm over k)", "percentile among the draws", ">= 0.9",
            "draws broken (degenerate answers)",
            "without the broken draws (post hoc): ranked - draws, percentile"]  # fmt: skip
    n = len(results[0].draws_rates) if results else 0
    text = "\n".join([
        f"# The frontier on test: ranking **{ranking}** against {n} random draws per k",
        "",
        f"Seeds: {', '.join(map(str, done))}." + (partial if missing else ""),
        "",
        markdown_table(head, cells),
        "",
        "A broken draw answers most harmful prompts with degenerate text (it refuses nothing and solves nothing:"
        " the draws' lr, chosen on 3-block draws, is too high for it). Broken draws stay in the comparison, as"
        " the protocol fixes the lr: they lower the draws' mean and rank below the ranked plan, so where there are"
        " any the estimate, ranks and percentile flatter the ranked plan. The last column, outside the protocol"
        " (chosen after broken draws were seen), leaves out every draw broken at any seed and says how many are"
        " left; a verdict reads the protocol's columns.",
        "",
    ])  # fmt: skip
    atomic_write_text(folder / "frontier_test.md", text)


def _unbroken_cell(unbroken: Unbroken | None) -> str:
    if unbroken is None:
        return "(none broken)"
    low, high = unbroken.interval
    return (f"{100 * unbroken.estimate:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], {unbroken.percentile:.2f}"
            f" ({unbroken.draws} draws)")  # fmt: skip
