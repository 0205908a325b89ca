"""What the logit refusal score means in judged refusals: ``figures/refusal_score.md``.

    python analyses/refusal_score_validity.py RUN_DIR [--out figures/refusal_score.md]

From a run's ``report.json`` (every judged prompt's first-token refusal score, ``EvalRow.scores``, and the
three-way judge's refusals): per model the AUROC of the score against judged refusal over every judged
set, with a bootstrap 95% interval; pooled over models, the judged refusal rate per band of the score
(Wilson 95% intervals) and a logistic fit ``P(refusal) = 1 / (1 + exp(-(a + b * score)))``, which turns a
change of the score (the causal sweep's unit) into a change of judged refusal
(``interp.report.study_tables.score_validity_report``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interp.evaluation.suite import EvalRow
from interp.io.atomic import atomic_write_text
from interp.report.study_tables import score_validity_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", default="figures/refusal_score.md")
    args = parser.parse_args()
    models = json.loads((Path(args.run) / "report.json").read_text())["models"]
    text = score_validity_report([EvalRow.from_dict(m | {"examples": {}}) for m in models], args.run)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
