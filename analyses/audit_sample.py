"""Draw the audit set: answers of a ``--full`` run, stratified over models, prompt sets and verdicts.

    python analyses/audit_sample.py RUN_DIR [--per-cell 10] [--seed 0] [--out interp/data/audit/items.jsonl]

For every (model, judged set) cell of the run it draws, seeded, up to ``per_cell`` answers: first every
answer on which the three-way judge and the GCG-style phrase list disagree (up to a third of the cell),
then equal shares of the three-way judge's verdicts (refusal, compliance, degenerate) as far as the cell
has them, then any answers to fill the cell. Each item gets an id (a hash of model, set and prompt). The
verdicts at drawing time are stored with the items for the record; readers label from prompt and answer
alone (``interp/data/audit/GUIDELINE.md``), never from the verdicts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from interp.core.judge import KINDS, judge_answer
from interp.evaluation.audit import ITEMS, legacy_refusal
from interp.evaluation.rejudge import RunAnswers
from interp.io import atomic_write_text, stable_hash


def draw(answers: RunAnswers, per_cell: int, seed: int) -> list[dict]:
    items = []
    for model, samples in answers.models.items():
        for name, spec in answers.sets.items():
            if name == "task":
                continue
            rng = random.Random(stable_hash([seed, model, name]))
            cell = [
                {"prompt": p, "answer": a, "kind": judge_answer(a), "legacy_refusal": legacy_refusal(a)}
                for p, a in zip(spec["prompts"], samples[0][name])
            ]
            rng.shuffle(cell)
            chosen = [c for c in cell if (c["kind"] == "refusal") != c["legacy_refusal"]][: per_cell // 3]
            share = max(1, (per_cell - len(chosen)) // len(KINDS))
            for kind in KINDS:
                chosen += [c for c in cell if c["kind"] == kind and c not in chosen][:share]
            chosen += [c for c in cell if c not in chosen][: per_cell - len(chosen)]
            for c in chosen:
                items.append({"id": stable_hash([model, name, c["prompt"]], 12), "model": model, "set": name, **c})
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder of interp run --full (complete answers)")
    parser.add_argument("--per-cell", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ITEMS))
    args = parser.parse_args()
    answers = RunAnswers.load(args.run)
    if not answers.complete:
        print(f"audit_sample: {args.run} holds answers stopped at a refusal; draw from a --full run", file=sys.stderr)
        return 2
    items = draw(answers, args.per_cell, args.seed)
    atomic_write_text(Path(args.out), "".join(json.dumps(item) + "\n" for item in items))
    print(f"{len(items)} items from {len(answers.models)} models -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
