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

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.chat import ChatFormat
from ..core.models import ModelPair
from ..core.prompts import PromptSet
from ..evaluation.table import Candidate, EvalConfig, EvalRow, EvalSuite, evaluate_models
from ..io import Stopwatch
from ..measures.result import AnalysisResult
from ..study import Plan, train_plans
from ..training.restore import RestoreConfig, paper_alignment_layers, restore_many
from .claims import claims_of, rate
from .design import Protocol, protocol_plans
from .report import ProtocolResult


def _with_lr(plan: Plan, lr: float) -> Plan:
    return replace(plan, lr=lr, key=f"{plan.key}@{lr:g}", name=f"{plan.name} lr {lr:g}")


def _safe(suite: EvalSuite) -> str:
    return "xstest" if suite.xstest is not None else "harmless"


def _claim_suite(suite: EvalSuite, part: str) -> EvalSuite:
    """The sets the claims read, ``part`` of each (harmful, XSTest unsafe and safe where present, and the
    harmless and task sets every row needs)."""
    keep = {"harmful", "xstest_unsafe", "xstest", "harmless", "task"}
    return EvalSuite(**{name: p.part(part) for name, p in suite.sets().items() if name in keep})


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
    families = protocol_plans(analysis, protocol)
    short, long = protocol.budgets
    tokens = analysis.refusal_tokens
    safe = _safe(suite)
    reference = [Candidate("base", pair.base, plan="base"), Candidate("finetuned", pair.finetuned, plan="finetuned")]

    histories: dict[str, dict[str, list[dict]]] = {}  # "<steps> steps, seed <s>" -> plan -> loss per step

    def judged(plans: list[Plan], config: RestoreConfig, on: EvalSuite, label: str = "") -> list[EvalRow]:
        restored = train_plans(plans, pair, analysis.layer_map, harmful, retain, config, chat=chat, cache=cache,
                               progress=progress)  # fmt: skip
        run = label or f"{config.steps} steps, seed {config.seed}"
        histories.setdefault(run, {}).update({r.plan.name: r.stats.history for r in restored})
        candidates = reference + [r.candidate() for r in restored]
        return evaluate_models(
            candidates, on, refusal_tokens=tokens, reference=pair.finetuned, config=evaluation, chat=chat,
            cache=cache, progress=progress, log=log,
        )  # fmt: skip

    with watch("lr on dev"):
        dev = _claim_suite(suite, "dev")
        tried = {
            family: [_with_lr(plan, lr) for lr in protocol.lr_grid for plan in plans]
            for family, plans in (("ranked", families["ranked"]), ("bottom", families["bottom"]),
                                  ("all_layers", families["all_layers"]), ("draws", families["tuning"]))
        }  # fmt: skip
        rows = judged([p for plans in tried.values() for p in plans], replace(restore, steps=short, seed=0), dev,
                      label=f"lr grid on dev, {short} steps")  # fmt: skip
        base, ft, trained = rows[0], rows[1], rows[2:]
        by_key = dict(zip([p.key for plans in tried.values() for p in plans], trained))
        lrs, trials = {}, []
        for family, plans in tried.items():
            scored = []
            for lr in protocol.lr_grid:
                mine = [by_key[p.key] for p in plans if p.lr == lr]
                harmful_rate = float(np.mean([r.harmful_refusal for r in mine]))
                over = float(np.mean([rate(r, safe) for r in mine]))
                task = float(np.mean([r.task_accuracy for r in mine]))
                ok = over <= rate(base, safe) + protocol.margin and task >= ft.task_accuracy - protocol.margin
                scored.append((ok, harmful_rate, -over, lr))
                trial = {"family": family, "lr": lr, "harmful": harmful_rate, "safe": over, "task": task, "ok": ok}
                trials.append(trial)
            qualified = [s for s in scored if s[0]]
            lrs[family] = max(qualified)[3] if qualified else max(scored, key=lambda s: s[2])[3]
        log("protocol: lr per family on dev: " + ", ".join(f"{f} {lr:g}" for f, lr in lrs.items()))
    if dev_only:
        result = ProtocolResult(lrs, trials, {}, {}, [], dict(watch.seconds), histories, safe)
        result.save(folder)
        return result

    test = _claim_suite(suite, "test")
    plans = {
        family: [_with_lr(p, lrs[family]) for p in families[family]]
        for family in ("ranked", "bottom", "all_layers", "draws")
    }
    order = [p for family in ("ranked", "bottom", "all_layers", "draws") for p in plans[family]]
    by_seed: dict[int, list[EvalRow]] = {}
    with watch("every plan at every seed"):
        for seed in protocol.seeds:
            by_seed[seed] = judged(order, replace(restore, steps=short, seed=seed), test)
    if released is not None:
        with watch("released recipe"):
            n = analysis.layer_map.n_layers
            recipe = Plan("released", "released SafeReAct recipe", tuple(range(n)), tuple(paper_alignment_layers(n)))
            rows = judged([recipe], released, test)
            for seed in protocol.seeds:  # one training (the release's seed), compared with every seed's plans
                by_seed[seed].append(rows[-1])
    with watch("strength sweep"):
        sweep = _strength_sweep(pair, analysis, plans, protocol, restore, harmful, retain, test, tokens, evaluation,
                                chat, cache, progress, log, histories)  # fmt: skip
    claims = claims_of(by_seed, plans | ({"released": [recipe]} if released is not None else {}), sweep, safe, protocol)
    result = ProtocolResult(lrs, trials, by_seed, sweep, claims, dict(watch.seconds), histories, safe)
    result.save(folder)
    return result


def _strength_sweep(pair, analysis, plans, protocol, restore, harmful, retain, test, tokens, evaluation, chat, cache,
                    progress, log, histories) -> dict[str, list[dict]]:  # fmt: skip
    """One long run of the long-budget plans (first seed), judged at every checkpoint on the test parts."""
    chosen = plans["ranked"] + plans["bottom"] + plans["all_layers"] + plans["draws"][: protocol.long_budget_draws]
    config = replace(restore, steps=protocol.budgets[1], seed=protocol.seeds[0])
    teacher = pair.base if config.teacher == "base" else None
    results = restore_many(
        pair.finetuned, analysis.layer_map, harmful, retain, [p.placement for p in chosen], config, base=teacher,
        chat=chat, checkpoints=protocol.checkpoints, progress=progress,
    )  # fmt: skip
    histories[f"{config.steps} steps, seed {config.seed}"] = {p.name: r.stats.history for p, r in zip(chosen, results)}
    candidates = [Candidate("base", pair.base, plan="base")]
    for plan, result in zip(chosen, results):
        for step in protocol.checkpoints:
            model = result.merged_at(step, pair.finetuned, name=f"{plan.name} @{step}")
            candidates.append(Candidate(f"{plan.name} @{step}", model, plan=f"{plan.key}@{step}"))
    rows = evaluate_models(
        candidates, test, refusal_tokens=tokens, reference=pair.finetuned, config=evaluation, chat=chat,
        cache=cache, progress=progress, log=log,
    )  # fmt: skip
    safe = _safe(test)
    base = {"step": 0, "harmful": rows[0].harmful_refusal, "safe": rate(rows[0], safe)}
    out: dict[str, list[dict]] = {"base": [base]}
    for row in rows[1:]:
        name, _, step = row.name.rpartition(" @")
        out.setdefault(name, []).append({"step": int(step), "harmful": row.harmful_refusal, "safe": rate(row, safe)})
    return out
