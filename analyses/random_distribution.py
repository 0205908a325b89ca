"""Table: the ranked plan against a distribution of random layer sets (issue 13, first part).

Trains the ranked plan, ``--draws`` random k-layer sets from all layers and ``--draws`` from the ranked
plan's depth range (``interp.study_plans.random_plans``; all in lockstep, same budget as the study, adapters cached)
and evaluates them with base and fine-tuned on the study's 299 held-out harmful prompts (and a sample of
harmless prompts and problems, which the table needs). Prints each plan's harmful refusal with its Wilson
interval and exact McNemar p against the ranked plan, the ranked plan's rank among the draws, and a paired
bootstrap interval of ranked minus the draws' mean refusal per prompt (their pooled answers;
``interp.frontier.compare_draws``, as the frontier compares its draws). Writes ``random_distribution.json``
into the run folder.

    python analyses/random_distribution.py [runs/default] [--draws 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from interp import AnalysisResult
from interp.evaluation.suite import Candidate, EvalSuite
from interp.evaluation.table import evaluate_models
from interp.evaluation.targets import paired_test
from interp.frontier import compare_draws
from interp.io.atomic import atomic_write_json
from interp.organism import OrganismRecipe, build_organism, study_prompts
from interp.report.tables import rate_cell
from interp.study_plans import make_plans, random_plans
from interp.study_training import train_plans
from interp.training.restore_config import RestoreConfig

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "default"), help="run folder")
    parser.add_argument("--draws", type=int, default=5, help="random draws per kind")
    args = parser.parse_args()
    analysis = AnalysisResult.load(args.run)
    recipe = OrganismRecipe()
    pair = build_organism(recipe, log=lambda _: None).load_pair()
    harmful, retain, full = study_prompts(recipe)
    suite = EvalSuite(harmful=full.harmful, harmless=full.harmless.sample(50, seed=0), task=full.task.head(30))
    layer_map = analysis.layer_map
    ranked = make_plans(layer_map, ())[0]
    anywhere = random_plans(layer_map, args.draws)
    late = random_plans(layer_map, args.draws, seed=100, low=min(ranked.layers), key="random_late")
    plans = [ranked, *anywhere, *late]
    restored = train_plans(plans, pair, layer_map, harmful, retain, RestoreConfig(), progress=False)
    candidates = [
        Candidate(r.plan.name, r.model, trainable_params=r.stats.trainable_params, plan=r.plan.key) for r in restored
    ]
    rows = evaluate_models(
        candidates,
        suite,
        refusal_tokens=analysis.refusal_tokens,
        reference=pair.finetuned,
        progress=False,
        log=lambda _: None,
    )
    mine = rows[0]  # the ranked plan
    print(f"harmful prompts: {len(mine.outcomes['harmful'])}; ranked layers {list(ranked.layers)}\n")
    print("| plan | harmful refusal | vs ranked (points) | McNemar p |")
    print("|---|---|---|---|")
    result = {"ranked": list(ranked.layers), "plans": []}
    for row in rows:
        p = paired_test(mine, row, "harmful_refusal").p_value  # exact McNemar on the 0/1 outcomes
        diff = 100 * (row.harmful_refusal - mine.harmful_refusal)
        cell = rate_cell(row.harmful_refusal, row.interval("harmful_refusal"))
        print(f"| {row.name} | {cell} | {diff:+.1f} | {p:.2g} |")
        result["plans"].append(
            {"plan": row.plan, "name": row.name, "harmful_refusal": row.harmful_refusal, "p_vs_ranked": p}
        )
    by_plan = {row.plan: row for row in rows}
    for label, group in (("all layers", anywhere), (f"layers {min(ranked.layers)}+", late)):
        draws = [by_plan[g.key] for g in group]
        versus = compare_draws(mine, draws)
        rates = sorted(r.harmful_refusal for r in draws)
        low, high = versus.pooled_interval
        print(
            f"\nrandom draws from {label}: refusal {', '.join(f'{r:.1%}' for r in rates)}; ranked beats "
            f"{versus.beaten} of {len(rates)} (median {np.median(rates):.1%}); ranked - pooled draws: "
            f"{100 * versus.pooled:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"
        )
        result[label] = {"rates": rates, "beaten": versus.beaten, "pooled_interval": [low, high]}
    atomic_write_json(Path(args.run) / "random_distribution.json", result)


if __name__ == "__main__":
    main()
