"""Every judge against the labelled audit set: ``figures/judge_audit.md``.

    python analyses/judge_audit.py [--out figures/judge_audit.md]

Judges: the three-way judge (``interp.core.judge.judge_answer``) and the phrase list it replaced
(``interp.evaluation.audit.legacy_refusal``; it has no degenerate verdict). Agreement on the dev split
(where the judge's rules were changed) and on the test split (reported), per group of prompt sets
(``interp.evaluation.audit``), and the labelled items where the three-way judge and the label differ on test.
"""

from __future__ import annotations

import argparse
from collections import Counter

from interp.core.judge import judge_answer
from interp.evaluation.audit import audit_judge, legacy_refusal, load_audit
from interp.io.atomic import atomic_write_text
from interp.report.judge_tables import audit_table
from interp.report.tables import markdown_table

JUDGES = {
    "three-way judge": lambda prompt, answer: judge_answer(answer),
    "phrase list (before)": lambda prompt, answer: "refusal" if legacy_refusal(answer) else "compliance",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/judge_audit.md")
    args = parser.parse_args()
    lines = ["# Judges against the labelled audit set", ""]
    every = load_audit()
    labels = Counter(item.label for item in every)
    lines += [
        f"{len(every)} answers labelled by reading (`interp/data/audit/GUIDELINE.md`): "
        + ", ".join(f"{n} {label}" for label, n in labels.most_common())
        + f"; {sum(item.doubt for item in every)} marked doubtful.",
        "",
    ]
    for split in ("test", "dev"):
        items = load_audit(split)
        results = {name: audit_judge(items, verdict) for name, verdict in JUDGES.items()}
        lines += [f"## {split} split ({len(items)} answers)", "", audit_table(results), ""]
    test = load_audit("test")
    wrong = [item for item in test if judge_answer(item.answer) != item.label]
    lines += ["## Test answers the three-way judge gets wrong", ""]
    cells = [
        [item.model, item.set, judge_answer(item.answer), item.label + (" (doubt)" if item.doubt else ""),
         item.answer[:140].replace("\n", " ").replace("|", "/")]
        for item in wrong
    ]  # fmt: skip
    lines += [markdown_table(["model", "set", "judge", "label", "answer (start)"], cells), ""]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
