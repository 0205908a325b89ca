"""Draw audit items: answers of a ``--full`` run, stratified over models, prompt sets and verdicts.

    python analyses/audit_sample.py RUN_DIR --split test [--per-cell 10] [--seed 0] [--append]

For every (model, judged set) cell of the run it draws, seeded, up to ``per_cell`` answers
(``interp.evaluation.audit.draw_items``): first every answer on which the three-way judge and the earlier
phrase list disagree (up to a third of the cell), then equal shares of the three-way judge's verdicts
(refusal, compliance, degenerate) as far as the cell has them, then any answers to fill the cell. A
(prompt, answer) already in the audit set, or drawn for another model of the same run, is not drawn again.
Each item gets an id (a hash of model, set and prompt), its split and the run it came from. The verdicts at
drawing time are stored with the items for the record; readers label from prompt and answer alone
(``interp/data/audit/GUIDELINE.md``), never from the verdicts. ``--append`` adds to
``interp/data/audit/items.jsonl`` instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import sys

from interp.evaluation.audit import ITEMS, draw_items
from interp.evaluation.rejudge import RunAnswers
from interp.io.atomic import atomic_write_text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder of interp run --full (complete answers)")
    parser.add_argument("--split", choices=["dev", "test"], required=True)
    parser.add_argument("--per-cell", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true")
    args = parser.parse_args()
    answers = RunAnswers.load(args.run)
    if not answers.complete:
        print(f"audit_sample: {args.run} holds answers stopped at a refusal; draw from a --full run", file=sys.stderr)
        return 2
    old = [json.loads(line) for line in ITEMS.read_text().splitlines()] if args.append and ITEMS.exists() else []
    items = draw_items(answers, args.per_cell, args.seed, {(i["prompt"], i["answer"]) for i in old})
    ids = {i["id"] for i in old}
    items = [{"id": i["id"], "split": args.split, "run": args.run, **i} for i in items if i["id"] not in ids]
    atomic_write_text(ITEMS, "".join(json.dumps(item) + "\n" for item in old + items))
    print(f"{len(items)} {args.split} items from {len(answers.models)} models of {args.run} -> {ITEMS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
