"""The pre-registered test of the central claim (``interp/data/protocol.toml``), run end to end.

``run_protocol`` takes a pair, its analysis and the study's prompts and follows the file:

1. **Plans**, all aligned at the same plan-independent layers (every 5th layer and the last): the
   layer map's top ``k`` (``ranked``), its ``k`` lowest (``bottom``), every layer (``all_layers``), and
   ``draws`` random ``k``-sets, ``draws_in_depth_range`` of them from the ranked plan's depth range and
   holding its deepest layer (none equal to the ranked set; a range with fewer such sets gives all it has and
   the rest come from all layers); three more draws only to choose the draws' lr.
2. **A learning rate per family, on dev**: every family at every lr of the grid, seed 0, the short
   budget, in lockstep; judged on the dev parts (``PromptSet.part``) of the harmful, safe and task sets.
   The lr with the highest dev harmful refusal among those whose dev over-refusal is at most the base's
   + 5 points and whose task accuracy is at least the fine-tuned model's - 5 points (the lowest
   over-refusal if none qualifies).
3. **Every plan at every seed** at its lr and the short budget, judged on the test parts of the claim sets
   (refusal, logit refusal score: ``interp.protocol.claims``); the long-budget plans of the first seed
   also at every checkpoint of one long run (the strength sweep).
4. **The claims** (``interp.protocol.claims``) and the report (``interp.protocol.report``).

A run can be split over sittings by seed: the dev grid's rows and each seed's test rows are kept in the
output folder (``protocol_lr_grid.json``, ``protocol_seed_<seed>.json``, each under the key of what it
depends on: ``Bench.kept``), and a later run into the same folder reads them instead of training. Until
every seed is in, the result is partial (``ProtocolResult.missing_seeds``): the claims read the seeds so
far, and the stages made once (the released recipe, the full table, the published methods, the strength
sweep) wait for a run that completes the seeds.

The "safe" set, whose refusal is over-refusal, is XSTest safe where the suite has it, else harmless.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, replace
from pathlib import Path

from ..core.chat import ChatFormat
from ..core.models import LoadedModel, ModelPair
from ..core.prompts import PromptSet
from ..errors import ConfigError
from ..evaluation.suite import Candidate, EvalConfig, EvalRow, EvalSuite
from ..evaluation.table import evaluate_models
from ..io.stopwatch import Stopwatch
from ..measures.result import AnalysisResult
from ..study_plans import Plan, released_plan
from ..study_training import train_plans
from ..training.lora import apply_adapter
from ..training.restore_config import RestoreConfig
from .bench import LR_GRID, Bench, choose_lrs, claim_suite, load_rows, rows_key, safe_set, with_lr
from .claims import claims_of, rate
from .design import FAMILIES, Protocol, protocol_plans
from .peers import distill_rows, peer_rows
from .report import ProtocolResult

SWEEP_FILLER = 16  # harmless and task prompts in the strength sweep's suite (no claim reads them)


# ----------------------------------------------------------------------------- the run
def run_protocol(
    pair: ModelPair,
    analysis: AnalysisResult,
    folder: str | Path,
    *,
    harmful: PromptSet,
    retain: PromptSet,
    suite: EvalSuite,
    protocol: Protocol | None = None,
    restore: RestoreConfig = RestoreConfig(),
    evaluation: EvalConfig = EvalConfig(),
    chat: ChatFormat = ChatFormat(),
    dev_only: bool = False,
    released: RestoreConfig | None = None,
    unaligned: LoadedModel | None = None,
    ranking: tuple[str, list[float]] | None = None,
    seeds: list[int] | None = None,
    earlier: str | Path | None = None,
    cache: bool = True,
    progress: bool = True,
    log=print,
) -> ProtocolResult:
    """The protocol on ``pair`` (module docstring), written into ``folder`` (``protocol.md``, ``protocol.json``).
    ``dev_only`` stops after the learning rates are chosen on dev: nothing is read from the test parts.
    ``released``: the released SafeReAct recipe's settings (``PRESETS["safereact"].config``; 38-49 min
    on 2 CPU cores), trained once with LoRA on every layer and judged beside the plans for H4; ``None``: H4
    is not run. ``unaligned``: the checkpoint the base was aligned from (the organism's source): the
    published weight-space methods (``interp.protocol.peers``) join the table, each at its dev-chosen
    setting, and self-distillation, their output-space peer, at every seed; ``None``: they are left out.
    ``ranking``: ``(name, per-layer values)``, a candidate of the layers study (``LayerValidity.candidates``)
    that ranks the layers instead of the layer map's score; the ranked plan, bottom-k and the depth-range
    draws follow it. ``seeds``: train only these of the protocol's seeds now, and stop there (partial unless
    ``earlier`` holds the rest); ``None``: complete the run (every seed, then the stages made once).
    ``earlier``: a former run's folder whose kept rows are read instead of trained (module docstring)."""
    protocol = protocol or Protocol.load()
    if seeds is not None and not set(seeds) <= set(protocol.seeds):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))}: the protocol's seeds are {list(protocol.seeds)}")
    if ranking is not None:
        analysis = replace(analysis, layer_map=analysis.layer_map.reranked(ranking[1], ranking[0], protocol.k))
        log(f"protocol: ranking {ranking[0]}, top {protocol.k}: {analysis.layer_map.selected_layers}")
    watch = Stopwatch(log=lambda line: log(f"== {line}"))
    bench = Bench(pair, analysis, harmful, retain, evaluation, chat, cache, progress, log)
    families = protocol_plans(analysis, protocol)
    safe = safe_set(suite)

    test = claim_suite(suite, "test")
    tuning = {family: families[family] for family in ("ranked", "bottom", "all_layers")} | {"draws": families["tuning"]}
    _check_earlier(bench, tuning, families, protocol, restore, claim_suite(suite, "dev"), test, earlier)
    with watch("lr on dev"):
        lrs, trials = choose_lrs(bench, tuning, protocol, restore, claim_suite(suite, "dev"), earlier, folder)
        log("protocol: lr per family on dev: " + ", ".join(f"{f} {lr:g}" for f, lr in lrs.items()))
    if dev_only:
        result = ProtocolResult(lrs, trials, {}, {}, [], dict(watch.seconds), bench.histories, safe,
                                ranking=_ranking(ranking, analysis))  # fmt: skip
        result.save(folder)
        return result

    plans = {family: [with_lr(p, lrs[family]) for p in families[family]] for family in FAMILIES}
    order = [p for family in FAMILIES for p in plans[family]]
    by_seed: dict[int, list[EvalRow]] = {}
    with watch("every plan at every seed"):
        for seed in protocol.seeds:
            rows = bench.kept(order, replace(restore, steps=protocol.budgets[0], seed=seed), test, seed_name(seed),
                              earlier=earlier, folder=folder, run=seeds is None or seed in seeds)  # fmt: skip
            if rows is not None:
                by_seed[seed] = rows
    missing = [seed for seed in protocol.seeds if seed not in by_seed]
    if missing:  # partial: the claims over the seeds so far; the stages made once wait for the last seed
        log(f"protocol: seeds {', '.join(map(str, missing))} not run yet: a partial result")
        claims = claims_of(by_seed, plans, {}, safe, protocol)
        result = ProtocolResult(lrs, trials, by_seed, {}, claims, dict(watch.seconds), bench.histories, safe,
                                ranking=_ranking(ranking, analysis), missing_seeds=missing)  # fmt: skip
        result.save(folder)
        return result
    if released is not None:
        with watch("released recipe"):
            recipe = released_plan(analysis.layer_map.n_layers)
            rows = bench.judged([recipe], released, test)
            for seed in protocol.seeds:  # one training (the release's seed), compared with every seed's plans
                by_seed[seed].append(rows[-1])
            plans["released"] = [recipe]
    full: list[EvalRow] = []
    if suite.donotanswer is not None:  # amendment 1: the full table of the named plans at the first seed
        with watch("full table"):
            every = suite.part("test")
            seed = protocol.seeds[0]
            full = bench.judged([plans[f][0] for f in ("ranked", "bottom", "all_layers")],
                                replace(restore, steps=protocol.budgets[0], seed=seed), every)  # fmt: skip
            if "released" in plans:
                full += bench.judged(plans["released"], released, every)[2:]
    peers, peer_trials = [], []
    if unaligned is not None:
        with watch("peer methods"):
            chosen, peer_trials, rows = peer_rows(pair, unaligned, bench, claim_suite(suite, "dev"), test,
                                                  protocol.margin)  # fmt: skip
            for seed in protocol.seeds:  # deterministic: one row, beside every seed's plans
                by_seed[seed] += rows
        with watch("self-distillation"):  # the output-space peer, at the ranked plan's layers, every seed
            short = replace(restore, steps=protocol.budgets[0])
            cost, tried, distilled = distill_rows(bench, list(plans["ranked"][0].layers), claim_suite(suite, "dev"),
                                                  test, protocol.seeds, short, protocol.margin)  # fmt: skip
            chosen, peer_trials = [*chosen, cost], peer_trials + tried
            peers = [asdict(p) for p in chosen]
            for seed in protocol.seeds:
                by_seed[seed].append(distilled[seed])
    with watch("strength sweep"):
        sweep = _strength_sweep(bench, plans, protocol, restore, test)
    claims = claims_of(by_seed, plans, sweep, safe, protocol)
    result = ProtocolResult(lrs, trials, by_seed, sweep, claims, dict(watch.seconds), bench.histories, safe, peers,
                            peer_trials, full, _ranking(ranking, analysis))  # fmt: skip
    result.save(folder)
    return result


def seed_name(seed: int) -> str:
    """The kept rows of one seed's plans on test (``Bench.kept``)."""
    return f"protocol_seed_{seed}"


def _check_earlier(bench: Bench, tuning: dict, families: dict, protocol: Protocol, restore: RestoreConfig,
                   dev: EvalSuite, test: EvalSuite, earlier) -> None:  # fmt: skip
    """Every file ``earlier`` keeps for this run made under its key, before any training: the dev grid's,
    and each seed's at the lrs that grid chooses (read from it when it is there)."""
    if not earlier:
        return
    grid = [with_lr(p, lr) for plans in tuning.values() for lr in protocol.lr_grid for p in plans]
    short = replace(restore, steps=protocol.budgets[0])
    found = load_rows(earlier, LR_GRID, rows_key(bench, grid, replace(short, seed=0), dev))
    if found is None:
        return  # no grid yet: no seed can have been run from this folder with it
    quiet = replace(bench, log=lambda line: None, histories={})
    lrs, _ = choose_lrs(quiet, tuning, protocol, restore, dev, earlier)  # read, not trained
    order = [with_lr(p, lrs[family]) for family in FAMILIES for p in families[family]]
    bench.check_kept([(order, replace(short, seed=s), test, seed_name(s)) for s in protocol.seeds], earlier)


def _ranking(ranking, analysis: AnalysisResult) -> dict:
    name = "layer map score" if ranking is None else ranking[0]
    return {"name": name, "selected": analysis.layer_map.selected_layers}


def _strength_sweep(
    bench: Bench, plans: dict[str, list[Plan]], protocol: Protocol, restore: RestoreConfig, test: EvalSuite
) -> dict[str, list[dict]]:
    """One long run of the long-budget plans (first seed), judged at every checkpoint on the test parts of
    harmful and the safe set (the file's amendment 1; the first ``SWEEP_FILLER`` prompts of harmless and the
    task stand in for the columns every row has, and nothing reads them)."""
    pair = bench.pair
    safe = safe_set(test)
    harmless = test.harmless if safe == "harmless" else test.harmless.head(SWEEP_FILLER)
    extra = {} if safe == "harmless" else {safe: getattr(test, safe)}
    test = EvalSuite(harmful=test.harmful, harmless=harmless, task=test.task.head(SWEEP_FILLER), **extra)
    chosen = plans["ranked"] + plans["bottom"] + plans["all_layers"] + plans["draws"][: protocol.long_budget_draws]
    config = replace(restore, steps=protocol.budgets[1], seed=protocol.seeds[0])
    restored = train_plans(chosen, pair, bench.analysis.layer_map, bench.harmful, bench.retain, config,
                           chat=bench.chat, cache=bench.cache, progress=bench.progress,
                           checkpoints=protocol.checkpoints)  # fmt: skip
    bench.histories[f"{config.steps} steps, seed {config.seed}"] = {r.plan.name: r.stats.history for r in restored}
    kept = [(r.plan, r.checkpoints) for r in restored]
    del restored  # the merged models: the sweep reads the checkpoints only
    out: dict[str, list[dict]] = {}
    for plan, checkpoints in kept:  # one plan's checkpoints at a time: all of them at once can fill the memory
        candidates = [Candidate("base", pair.base, plan="base")]
        for step in protocol.checkpoints:
            copy = replace(pair.finetuned, hf=deepcopy(pair.finetuned.hf))
            model = apply_adapter(copy, checkpoints[step], name=f"{plan.name} @{step}")
            candidates.append(Candidate(f"{plan.name} @{step}", model, plan=f"{plan.key}@{step}"))
        rows = evaluate_models(
            candidates, test, refusal_tokens=bench.analysis.refusal_tokens, reference=pair.finetuned,
            config=bench.evaluation, chat=bench.chat, cache=bench.cache, progress=bench.progress, log=bench.log,
        )  # fmt: skip
        out["base"] = [{"step": 0, "harmful": rows[0].harmful_refusal, "safe": rate(rows[0], safe)}]
        for row in rows[1:]:
            name, _, step = row.name.rpartition(" @")
            point = {"step": int(step), "harmful": row.harmful_refusal, "safe": rate(row, safe)}
            out.setdefault(name, []).append(point)
        del candidates, rows
    return out
