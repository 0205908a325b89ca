"""Every judge against the labelled audit set: ``figures/judge_audit.md``.

    python analyses/judge_audit.py [--out figures/judge_audit.md]

Judges (``interp.evaluation.audit.JUDGES``): the three-way judge (``interp.core.judge.judge_answer``) and
the phrase list it replaced (``interp.evaluation.audit.legacy_refusal``; it has no degenerate verdict).
Agreement on the dev split (where the judge's rules were changed) and on the test split (reported), per
group of prompt sets (``interp.evaluation.audit``), and the labelled items where the three-way judge and
the label differ on test; the report is ``interp.report.judge_tables.audit_report``.
"""

from __future__ import annotations

import argparse

from interp.evaluation.audit import load_audit
from interp.io.atomic import atomic_write_text
from interp.report.judge_tables import audit_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/judge_audit.md")
    args = parser.parse_args()
    text = audit_report(load_audit())
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
