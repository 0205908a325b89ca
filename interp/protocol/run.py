"""The pre-registered test of the central claim (``interp/data/protocol.toml``), run end to end.

``run_protocol`` takes a pair, its analysis and the study's prompts and follows the file:

1. **Plans**, all aligned at the same plan-independent layers (every 5th layer and the last): the
   layer map's top ``k`` (``ranked``), its ``k`` lowest (``bottom``), every layer (``all_layers``), and
   ``draws`` random ``k``-sets, ``draws_in_depth_range`` of them from the ranked plan's depth range and
   holding its deepest layer (none equal to the ranked set); three more draws only to choose the draws' lr.
2. **A learning rate per family, on dev**: every family at every lr of the grid, seed 0, the short
   budget, in lockstep; judged on the dev parts (``PromptSet.part``) of the harmful, safe and task sets.
   The lr with the highest dev harmful refusal among those whose dev over-refusal is at most the base's
   + 5 points and whose task accuracy is at least the fine-tuned model's - 5 points (the lowest
   over-refusal if none qualifies).
3. **Every plan at every seed** at its lr and the short budget, judged on the test parts of the claim sets
   (refusal, first-token refusal score); the long-budget plans of the first seed also at every checkpoint
   of one long run (the strength sweep).
4. **The claims** (``interp.protocol.claims``) and the report (``interp.protocol.report``).

The "safe" set, whose refusal is over-refusal, is XSTest safe where the suite has it, else harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.chat import ChatFormat
from ..core.models import ModelPair
from ..core.prompts import PromptSet
from ..evaluation.table import Candidate, EvalConfig, EvalRow, EvalSuite, evaluate_models
from ..io import Stopwatch
from ..measures.result import AnalysisResult
from ..study import Plan, released_plan, train_plans
from ..training.lora import apply_adapter
from ..training.restore import RestoreConfig
from .claims import claims_of, rate
from .design import FAMILIES, Protocol, protocol_plans
from .report import ProtocolResult


def _with_lr(plan: Plan, lr: float) -> Plan:
    return replace(plan, lr=lr, key=f"{plan.key}@{lr:g}", name=f"{plan.name} lr {lr:g}")


def _safe(suite: EvalSuite) -> str:
    return "xstest" if suite.xstest is not None else "harmless"


def claim_suite(suite: EvalSuite, part: str) -> EvalSuite:
    """The sets the claims read, ``part`` of each (harmful, XSTest unsafe and safe where present, and the
    harmless and task sets every row needs)."""
    keep = {"harmful", "xstest_unsafe", "xstest", "harmless", "task"}
    return EvalSuite(**{name: p.part(part) for name, p in suite.sets().items() if name in keep})


@dataclass
class Bench:
    """What every train-and-judge step of the protocol shares: the pair and its analysis, the training
    prompts, the settings; ``histories`` collects every run's losses (run -> plan -> loss per step)."""

    pair: ModelPair
    analysis: AnalysisResult
    harmful: PromptSet
    retain: PromptSet
    evaluation: EvalConfig = EvalConfig()
    chat: ChatFormat = ChatFormat()
    cache: bool = True
    progress: bool = True
    log: Callable[[str], None] = print
    histories: dict[str, dict[str, list[dict]]] = field(default_factory=dict)

    def judged(self, plans: list[Plan], config: RestoreConfig, on: EvalSuite, label: str = "") -> list[EvalRow]:
        """Train ``plans`` (cached, in lockstep) and judge them on ``on``: the rows of the base, the
        fine-tuned model, then every plan; each row's ``info["first_gradient"]`` is its step-0 gradient."""
        restored = train_plans(plans, self.pair, self.analysis.layer_map, self.harmful, self.retain, config,
                               chat=self.chat, cache=self.cache, progress=self.progress)  # fmt: skip
        run = label or f"{config.steps} steps, seed {config.seed}"
        self.histories.setdefault(run, {}).update({r.plan.name: r.stats.history for r in restored})
        reference = [
            Candidate("base", self.pair.base, plan="base"),
            Candidate("finetuned", self.pair.finetuned, plan="finetuned"),
        ]
        rows = evaluate_models(
            reference + [r.candidate() for r in restored], on, refusal_tokens=self.analysis.refusal_tokens,
            reference=self.pair.finetuned, config=self.evaluation, chat=self.chat, cache=self.cache,
            progress=self.progress, log=self.log,
        )  # fmt: skip
        for row, r in zip(rows[2:], restored):
            row.info["first_gradient"] = r.stats.first_gradient
        return rows


def choose_lr(family: str, rows: dict[float, list[EvalRow]], base: EvalRow, ft: EvalRow, safe: str,
              margin: float) -> tuple[float, list[dict]]:  # fmt: skip
    """The file's lr rule: ``rows[lr]`` are a family's dev rows at that lr; the lr with the highest mean
    harmful refusal among those whose over-refusal is at most the base's + ``margin`` and whose task
    accuracy is at least the fine-tuned model's - ``margin`` (the lowest over-refusal if none qualifies).
    Returns it and a trial record per lr."""
    scored, trials = [], []
    for lr, mine in rows.items():
        harmful_rate = float(np.mean([r.harmful_refusal for r in mine]))
        over = float(np.mean([rate(r, safe) for r in mine]))
        task = float(np.mean([r.task_accuracy for r in mine]))
        ok = over <= rate(base, safe) + margin and task >= ft.task_accuracy - margin
        scored.append((ok, harmful_rate, -over, lr))
        trials.append({"family": family, "lr": lr, "harmful": harmful_rate, "safe": over, "task": task, "ok": ok})
    qualified = [s for s in scored if s[0]]
    return (max(qualified)[3] if qualified else max(scored, key=lambda s: s[2])[3]), trials


def choose_lrs(bench: Bench, families: dict[str, list[Plan]], protocol: Protocol, restore: RestoreConfig,
               dev: EvalSuite) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """Every family at every lr of the grid, seed 0, the short budget, in lockstep, judged on ``dev``;
    each family's lr by ``choose_lr``."""
    tried = {family: [_with_lr(p, lr) for lr in protocol.lr_grid for p in plans] for family, plans in families.items()}
    order = [p for plans in tried.values() for p in plans]
    short = protocol.budgets[0]
    rows = bench.judged(order, replace(restore, steps=short, seed=0), dev, label=f"lr grid on dev, {short} steps")
    base, ft, by_key = rows[0], rows[1], dict(zip([p.key for p in order], rows[2:]))
    lrs, trials = {}, []
    for family, plans in tried.items():
        by_lr = {lr: [by_key[p.key] for p in plans if p.lr == lr] for lr in protocol.lr_grid}
        lrs[family], tried_here = choose_lr(family, by_lr, base, ft, _safe(dev), protocol.margin)
        trials += tried_here
    return lrs, trials


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
    cache: bool = True,
    progress: bool = True,
    log=print,
) -> ProtocolResult:
    """The protocol on ``pair`` (module docstring), written into ``folder`` (``protocol.md``, ``protocol.json``).
    ``dev_only`` stops after the learning rates are chosen on dev: nothing is read from the test parts.
    ``released``: the released SafeReAct recipe's settings (``PRESETS["safereact"].config``; about 23 min
    on this CPU), trained once with LoRA on every layer and judged beside the plans for H4; ``None``: H4
    is not run."""
    protocol = protocol or Protocol.load()
    watch = Stopwatch(log=lambda line: log(f"== {line}"))
    bench = Bench(pair, analysis, harmful, retain, evaluation, chat, cache, progress, log)
    families = protocol_plans(analysis, protocol)
    safe = _safe(suite)

    with watch("lr on dev"):
        tuning = {family: families[family] for family in ("ranked", "bottom", "all_layers")}
        lrs, trials = choose_lrs(bench, tuning | {"draws": families["tuning"]}, protocol, restore,
                                 claim_suite(suite, "dev"))  # fmt: skip
        log("protocol: lr per family on dev: " + ", ".join(f"{f} {lr:g}" for f, lr in lrs.items()))
    if dev_only:
        result = ProtocolResult(lrs, trials, {}, {}, [], dict(watch.seconds), bench.histories, safe)
        result.save(folder)
        return result

    test = claim_suite(suite, "test")
    plans = {family: [_with_lr(p, lrs[family]) for p in families[family]] for family in FAMILIES}
    order = [p for family in FAMILIES for p in plans[family]]
    by_seed: dict[int, list[EvalRow]] = {}
    with watch("every plan at every seed"):
        for seed in protocol.seeds:
            by_seed[seed] = bench.judged(order, replace(restore, steps=protocol.budgets[0], seed=seed), test)
    if released is not None:
        with watch("released recipe"):
            recipe = released_plan(analysis.layer_map.n_layers)
            rows = bench.judged([recipe], released, test)
            for seed in protocol.seeds:  # one training (the release's seed), compared with every seed's plans
                by_seed[seed].append(rows[-1])
            plans["released"] = [recipe]
    with watch("strength sweep"):
        sweep = _strength_sweep(bench, plans, protocol, restore, test)
    claims = claims_of(by_seed, plans, sweep, safe, protocol)
    result = ProtocolResult(lrs, trials, by_seed, sweep, claims, dict(watch.seconds), bench.histories, safe)
    result.save(folder)
    return result


def _strength_sweep(
    bench: Bench, plans: dict[str, list[Plan]], protocol: Protocol, restore: RestoreConfig, test: EvalSuite
) -> dict[str, list[dict]]:
    """One long run of the long-budget plans (first seed), judged at every checkpoint on the test parts."""
    pair = bench.pair
    chosen = plans["ranked"] + plans["bottom"] + plans["all_layers"] + plans["draws"][: protocol.long_budget_draws]
    config = replace(restore, steps=protocol.budgets[1], seed=protocol.seeds[0])
    restored = train_plans(chosen, pair, bench.analysis.layer_map, bench.harmful, bench.retain, config,
                           chat=bench.chat, cache=bench.cache, progress=bench.progress,
                           checkpoints=protocol.checkpoints)  # fmt: skip
    bench.histories[f"{config.steps} steps, seed {config.seed}"] = {r.plan.name: r.stats.history for r in restored}
    candidates = [Candidate("base", pair.base, plan="base")]
    for r in restored:
        for step in protocol.checkpoints:
            copy = replace(pair.finetuned, hf=deepcopy(pair.finetuned.hf))
            model = apply_adapter(copy, r.checkpoints[step], name=f"{r.plan.name} @{step}")
            candidates.append(Candidate(f"{r.plan.name} @{step}", model, plan=f"{r.plan.key}@{step}"))
    rows = evaluate_models(
        candidates, test, refusal_tokens=bench.analysis.refusal_tokens, reference=pair.finetuned,
        config=bench.evaluation, chat=bench.chat, cache=bench.cache, progress=bench.progress, log=bench.log,
    )  # fmt: skip
    safe = _safe(test)
    base = {"step": 0, "harmful": rows[0].harmful_refusal, "safe": rate(rows[0], safe)}
    out: dict[str, list[dict]] = {"base": [base]}
    for row in rows[1:]:
        name, _, step = row.name.rpartition(" @")
        out.setdefault(name, []).append({"step": int(step), "harmful": row.harmful_refusal, "safe": rate(row, safe)})
    return out
