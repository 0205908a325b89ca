"""Trials: the ranked restoration at several strengths (LoRA rank, steps), chosen on a selection suite.

Each setting trains the ranked plan of the run's layer map (``interp.study_training.train_plans``: cached like the
study's adapters) and is evaluated with base and fine-tuned on ``interp.organism.selection_suite``: the
built-in harmful validation split, 100 of ``harmless_train`` and 50 validation problems, none of them in
the study's evaluation suite or in anything restoration trains on, so the chosen setting is not fitted to
the reported table. Rule: the highest harmful refusal whose over-refusal stays within the base's + 5
points and whose task accuracy stays within the fine-tuned model's - 5 points; a setting the intervals
cannot tell from a cheaper one loses to it. Writes ``restore_trials.json`` into the run folder.

    python analyses/restore_trials.py [runs/default] [--settings 8:36 8:24 16:24 16:36]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, replace
from pathlib import Path

from interp import AnalysisResult
from interp.evaluation.suite import Candidate
from interp.evaluation.table import evaluate_models
from interp.io.atomic import atomic_write_json
from interp.organism import OrganismRecipe, build_organism, selection_suite, study_prompts
from interp.report.study_tables import results_table
from interp.study_plans import make_plans
from interp.study_training import train_plans
from interp.training.restore_config import RestoreConfig

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "default"), help="run folder")
    parser.add_argument("--settings", nargs="+", default=["8:36", "8:24", "16:24", "16:36"], help="rank:steps")
    args = parser.parse_args()
    analysis = AnalysisResult.load(args.run)
    recipe = OrganismRecipe()
    pair = build_organism(recipe, log=lambda _: None).load_pair()
    harmful, retain, _ = study_prompts(recipe)
    suite = selection_suite(recipe)
    ranked = make_plans(analysis.layer_map, ())[0]
    print(f"ranked layers {list(ranked.layers)}; selection suite {suite.sizes()}")

    candidates, configs = [Candidate("base", pair.base), Candidate("finetuned", pair.finetuned)], []
    for setting in args.settings:
        rank, steps = map(int, setting.split(":"))
        config = replace(RestoreConfig(), rank=rank, alpha=2 * rank, steps=steps)
        plan = replace(ranked, name=f"rank {rank}, {steps} steps")
        (restored,) = train_plans([plan], pair, analysis.layer_map, harmful, retain, config, progress=False)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{plan.name}: trained in {restored.stats.seconds:.0f}s (load {load})", flush=True)
        configs.append(asdict(config))
        candidates.append(
            Candidate(
                plan.name,
                restored.model,
                trainable_params=restored.stats.trainable_params,
                train_seconds=restored.stats.seconds,
                plan="ranked",
            )
        )
    rows = evaluate_models(
        candidates, suite, refusal_tokens=analysis.refusal_tokens, reference=pair.finetuned, progress=False
    )
    print(results_table(rows))
    out = Path(args.run) / "restore_trials.json"
    atomic_write_json(
        out,
        {
            "layers": list(ranked.layers),
            "suite": suite.sizes(),
            "settings": configs,
            "rows": [{k: v for k, v in row.to_dict().items() if k != "examples"} for row in rows],
            "intervals": {
                row.name: {c: row.interval(c) for c in ("harmful_refusal", "harmless_refusal", "task_accuracy")}
                for row in rows
            },
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
