"""What the logit refusal score means in judged refusals: ``figures/refusal_score.md``.

    python analyses/refusal_score_validity.py RUN_DIR [--out figures/refusal_score.md]

From a run's ``report.json`` (every judged prompt's first-token refusal score, ``EvalRow.scores``, and the
three-way judge's refusals): per model the AUROC of the score against judged refusal over every judged
set, with a bootstrap 95% interval; pooled over models, the judged refusal rate per band of the score
(Wilson 95% intervals) and a logistic fit ``P(refusal) = 1 / (1 + exp(-(a + b * score)))``, which turns a
change of the score (the causal sweep's unit) into a change of judged refusal.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from interp.evaluation.stats import auroc, bootstrap_interval, wilson_interval
from interp.io.atomic import atomic_write_text
from interp.report.tables import JUDGED_SETS, markdown_table, rate_cell

BANDS = (-math.inf, -6.0, -4.0, -2.0, 0.0, 2.0, math.inf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--out", default="figures/refusal_score.md")
    args = parser.parse_args()
    models = json.loads((Path(args.run) / "report.json").read_text())["models"]
    keys = [key for key, _ in JUDGED_SETS]
    rows, pooled_x, pooled_y = [], [], []
    for m in models:
        present = [k for k in keys if k in m.get("scores", {})]
        x = np.array([s for k in present for s in m["scores"][k]])
        y = np.array([o for k in present for o in m["outcomes"][k]], dtype=int)
        pooled_x.append(x)
        pooled_y.append(y)
        value = auroc(x, y)
        low, high = bootstrap_interval(auroc, x, y, resamples=1000)
        rows.append([m["name"], f"{y.sum()}/{len(y)}", f"{value:.3f} [{low:.3f}, {high:.3f}]"])
    x, y = np.concatenate(pooled_x), np.concatenate(pooled_y)
    bands = []
    for low, high in zip(BANDS, BANDS[1:]):
        inside = (x >= low) & (x < high)
        n, k = int(inside.sum()), int(y[inside].sum())
        label = f"[{low:g}, {high:g})"
        bands.append([label, str(n), rate_cell(k / n, wilson_interval(k, n)) if n else "n/a"])
    fit = LogisticRegression(C=1e6).fit(x[:, None], y)
    a, b = float(fit.intercept_[0]), float(fit.coef_[0, 0])

    def judged(score: float) -> float:
        return 1 / (1 + math.exp(-(a + b * score)))

    start = next((m["refusal_score"] for m in models if m["name"] == "finetuned"), -2.5)

    lines = [
        "# The logit refusal score against judged refusal",
        "",
        f"Run: `{args.run}`; every judged answer of every model ({len(y)}; {int(y.sum())} judged refusals).",
        "",
        "## Per model: AUROC of the score against judged refusal",
        "",
        markdown_table(["model", "judged refusals", "AUROC [95% bootstrap]"], rows),
        "",
        "## Pooled: judged refusal by band of the score",
        "",
        markdown_table(["score band (log-odds)", "answers", "judged refusal"], bands),
        "",
        f"Logistic fit: P(judged refusal) = 1 / (1 + exp(-({a:+.2f} {b:+.2f} x score))); a judged refusal "
        f"rate of 50% at score {-a / b:+.2f}, where one unit of the score moves it by about {b / 4 * 100:.0f} "
        f"points; from the fine-tuned model's mean score on harmful prompts ({start:+.2f}) one unit up takes "
        f"it from {judged(start):.1%} to {judged(start + 1):.1%}.",
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
