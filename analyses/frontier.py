"""Table and figure: the restoration frontier on the default pair (issue 13).

Ranked top-k and ``--draws`` random k-layer draws for every k in ``--ks``, and the all-layer recipe, each
trained with the study's budget (``interp.frontier.run_frontier``; adapters cached, plans in lockstep
groups) and evaluated with base and fine-tuned on the study's held-out harmful (299) and arithmetic (100)
prompts and a seeded sample of ``--harmless`` of its 300 harmless prompts (``--xstest`` adds XSTest's 200
unsafe and 250 safe prompts). Writes
``frontier.json`` and ``frontier.md`` into the run folder and ``frontier.png`` / ``.svg`` into
``--figures``; prints ``frontier.md``.

    python analyses/frontier.py [runs/default] [--ks 1 2 3 4 6 8] [--draws 3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from interp import AnalysisResult
from interp.evaluation.suite import EvalSuite
from interp.frontier import DEFAULT_KS, frontier_plans, run_frontier
from interp.io.stopwatch import Stopwatch
from interp.organism import OrganismRecipe, build_organism, study_prompts

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "default"), help="run folder (`interp run`)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="LoRA layer counts")
    parser.add_argument("--draws", type=int, default=3, help="random draws per k")
    parser.add_argument("--group", type=int, default=8, help="plans trained in lockstep at a time")
    parser.add_argument("--harmless", type=int, default=100, help="harmless prompts (seeded sample of 300)")
    parser.add_argument("--xstest", action="store_true", help="evaluate on XSTest's two sets too")
    parser.add_argument("--figures", default=str(ROOT / "figures"), help="where to write frontier.png / .svg")
    args = parser.parse_args()
    analysis = AnalysisResult.load(args.run)
    frontier_plans(analysis.layer_map, args.ks, args.draws)  # bad ks or draws: one line, before any work
    recipe = OrganismRecipe()
    pair = build_organism(recipe, log=lambda _: None).load_pair()
    harmful, retain, full = study_prompts(recipe)
    harmless = full.harmless.sample(args.harmless, seed=0)
    suite = EvalSuite(harmful=full.harmful, harmless=harmless, task=full.task)
    if args.xstest:
        suite = EvalSuite(**(full.sets() | {"harmless": harmless}))
    watch = Stopwatch(log=lambda line: print(f"== {line} (load average {os.getloadavg()[0]:.2f})"))
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    with watch("frontier"):
        run_frontier(
            pair,
            analysis.layer_map,
            analysis.refusal_tokens,
            args.run,
            harmful=harmful,
            retain=retain,
            suite=suite,
            ks=args.ks,
            draws=args.draws,
            group=args.group,
            figures=args.figures,
        )
    print((Path(args.run) / "frontier.md").read_text())


if __name__ == "__main__":
    main()
