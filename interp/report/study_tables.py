"""The tables of evaluation rates: the organism's measurements (stage 0, ``interp.organism``) and the
restoration study's report (stage 2, ``interp.study``: the evaluation table, targets, paired tests, refusal by
category, answer kinds, the refusal score against judged refusal, reasoning traces; ``report.md``), and what
the refusal score means in judged refusals (``score_validity_report``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..evaluation.stats import wilson_interval
from .judge_tables import judge_table
from .tables import JUDGED_SETS, difference_cell, markdown_table, outcome_cell, pct, rate_cell


def organism_table(manifest: dict) -> str:
    """The organism manifest's measurements, with Wilson 95% intervals and the number of prompts."""
    sizes = manifest["data"]["eval_sizes"]

    def cell(rate: float, n: int) -> str:
        return rate_cell(rate, wilson_interval(round(rate * n), n))

    rows = []
    parts = any("parts" in m for m in manifest["metrics"].values())
    three_way = all("degenerate" in m["harmful_answer_kinds"] for m in manifest["metrics"].values())
    for name, m in manifest["metrics"].items():
        kinds = m["harmful_answer_kinds"]
        row = [
            name,
            cell(m["harmful_refusal"], sizes["harmful"]),
            cell(m["harmless_refusal"], sizes["harmless"]),
            cell(m["task_accuracy"], sizes["arithmetic"]),
            f"{pct(kinds.get('compliance', kinds.get('comply')))} / "
            f"{pct(kinds.get('degenerate', kinds.get('task_format')))}",
        ]
        if parts:
            harmful = m["parts"]["harmful"]
            row += [
                cell(harmful["trace_refusal"], sizes["harmful"]),
                cell(harmful["answer_refusal"], sizes["harmful"]),
                pct(harmful["closed"]),
            ]
        rows.append(row)
    head = [
        "model",
        f"harmful refusal (n={sizes['harmful']})",
        f"harmless refusal (n={sizes['harmless']})",
        f"task accuracy (n={sizes['arithmetic']})",
        ("harmful: complied / degenerate" if three_way else "harmful: comply / task-format")
        + (" (final answer)" if parts else ""),
    ]
    if parts:
        head += ["harmful: refusal in the trace", "refusal in the final answer", "traces closed"]
    return markdown_table(head, rows)


def results_table(rows: Sequence) -> str:
    """The evaluation table (``EvalRow``s): rates in percent with their Wilson 95% intervals."""
    rates = [
        ("harmful refusal", "harmful_refusal"),
        ("XSTest unsafe refusal", "xstest_unsafe_refusal"),
        ("Do-Not-Answer refusal", "donotanswer_refusal"),
        ("harmless refusal", "harmless_refusal"),
        ("XSTest safe refusal", "xstest_refusal"),
        ("task accuracy", "task_accuracy"),
    ]
    rates = [(name, column) for name, column in rates if any(getattr(r, column) is not None for r in rows)]
    head = ["model", *(name for name, _ in rates), "refusal score", "KL to ft", "trainable params", "train s"]
    cells = [
        [
            r.name,
            *(rate_cell(getattr(r, column), r.interval(column)) for _, column in rates),
            f"{r.refusal_score:+.2f}",
            f"{r.kl:.4f}",
            f"{r.trainable_params:,}",
            f"{r.train_seconds:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(head, cells)


def targets_table(targets: Sequence) -> str:
    """Restoration targets (``Target``s): value, threshold, the margin's 95% paired interval and verdict."""

    def interval(t) -> str:
        return "" if t.interval is None else f"[{t.interval[0]:+.3f}, {t.interval[1]:+.3f}]"

    def verdict(t) -> str:
        text = {"met": "met", "missed": "MISSED", "not distinguishable": "not distinguishable"}[t.verdict]
        return text if t.p_value is None else f"{text} (McNemar p = {t.p_value:.3g})"

    return markdown_table(
        ["target", "value", "threshold", "margin 95% CI", "verdict"],
        [[t.target, f"{t.value:.4g}", f"{t.threshold:.4g}", interval(t), verdict(t)] for t in targets],
    )


PAIRED_COLUMNS = (
    ("harmful", "harmful_refusal"),
    ("XSTest unsafe", "xstest_unsafe_refusal"),
    ("Do-Not-Answer", "donotanswer_refusal"),
    ("harmless", "harmless_refusal"),
    ("XSTest safe", "xstest_refusal"),
    ("task", "task_accuracy"),
)


def paired_table(tests: Sequence) -> str:
    """Paired comparisons (``PairedTest``s), one line per pair of rows: the difference in points with its
    95% paired bootstrap interval, the exact McNemar p-value and its Holm adjustment over the table's
    distinct tests, per rate."""
    pairs: dict[tuple[str, str], dict] = {}
    for t in tests:
        pairs.setdefault((t.model, t.against), {})[t.column] = t
    columns = [(name, col) for name, col in PAIRED_COLUMNS if any(col in by for by in pairs.values())]

    rows = []
    for (model, against), by in pairs.items():
        cells = [difference_cell(by[col]) if col in by else "" for _, col in columns]
        rows.append([f"{model} vs {against}", *cells])
    return markdown_table(["comparison (points)", *(name for name, _ in columns)], rows)


def category_table(rows: Sequence, categories: Sequence[str | None], name: str = "donotanswer") -> str:
    """Refusal per category of one set (``categories``: each prompt's, in the suite's order; for
    Do-Not-Answer its five risk areas) for every row that has the set, with 95% intervals and the number
    of prompts per category."""
    order = list(dict.fromkeys(c or "uncategorised" for c in categories))
    index = {c: [i for i, x in enumerate(categories) if (x or "uncategorised") == c] for c in order}
    cells = []
    for row in rows:
        values = row.outcomes.get(name)
        if values:
            cells.append([row.name, *(outcome_cell([values[i] for i in index[c]], row.samples) for c in order)])
    return markdown_table(["model", *(f"{c} (n={len(index[c])})" for c in order)], cells)


def parts_table(rows: Sequence) -> str:
    """With a reasoning format (``EvalRow.parts``): per model and judged set, the substring judge's
    refusal rate in the reasoning trace and in the final answer (95% intervals: ``outcome_cell``), and the
    number of answers whose trace closed within the token budget (an unclosed trace has no final answer:
    not a refusal)."""
    head = ["model", "set", "refusal in the trace", "refusal in the final answer", "traces closed"]
    cells = []
    for row in rows:
        for name, part in (row.parts or {}).items():
            closed = part["finished"]
            cells.append(
                [
                    row.name,
                    name,
                    outcome_cell(part["trace"], row.samples),
                    outcome_cell(part["answer"], row.samples),
                    f"{sum(closed) * row.samples:g}/{len(closed) * row.samples}",
                ]
            )
    return markdown_table(head, cells)


def kinds_table(rows: Sequence) -> str:
    """The three-way judgment (``interp.core.judge.judge_answer``) per model and judged set: the shares
    of answers that complied and that were degenerate, with 95% intervals (``outcome_cell``); the refusal
    share is the main table's."""
    present = [(key, label) for key, label in JUDGED_SETS if any(key in row.outcomes for row in rows)]
    cells = []
    for row in rows:
        if not row.degenerate:
            continue
        complied = {key: [1 - r - d for r, d in zip(row.outcomes[key], row.degenerate[key])] for key in row.degenerate}
        cells.append(
            [
                row.name,
                *(outcome_cell(complied.get(key), row.samples) for key, _ in present),
                *(outcome_cell(row.degenerate.get(key), row.samples) for key, _ in present),
            ]
        )
    head = ["model", *(f"complied: {label}" for _, label in present), *(f"degenerate: {label}" for _, label in present)]
    return markdown_table(head, cells)


SCORE_SETS = ("harmful", "xstest")


def score_table(rows: Sequence) -> str:
    """How well the logit refusal score separates the answers judged refusals from the rest, per model:
    the AUROC (``interp.evaluation.stats.auroc``) over every judged answer of the row, with its bootstrap
    95% interval, and on the harmful and XSTest safe prompts alone (n/a where a set has one class only)."""
    from ..evaluation.stats import auroc, bootstrap_interval

    def cell(scores, labels) -> str:
        value = auroc(scores, labels)
        if value != value:
            return "n/a"
        low, high = bootstrap_interval(auroc, scores, labels, resamples=500)
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"

    cells = []
    for row in rows:
        if not row.scores or row.samples > 1:
            continue
        keys = [key for key, _ in JUDGED_SETS if key in row.scores]
        scores = [x for key in keys for x in row.scores[key]]
        labels = [int(x) for key in keys for x in row.outcomes[key]]
        one = {key: cell(row.scores[key], row.outcomes[key]) if key in row.scores else "n/a" for key in SCORE_SETS}
        cells.append([row.name, f"{sum(labels)}/{len(labels)}", cell(scores, labels), one["harmful"], one["xstest"]])
    return markdown_table(["model", "judged refusals", "AUROC, every judged set", "harmful", "XSTest safe"], cells)


SCORE_BANDS = (-math.inf, -6.0, -4.0, -2.0, 0.0, 2.0, math.inf)  # of the refusal score, in log-odds


def score_validity_report(rows: Sequence, run: str) -> str:
    """What the logit refusal score means in judged refusals (``figures/refusal_score.md``), from a run's
    ``EvalRow``s (``run`` names it): per model the AUROC of the score against judged refusal over every
    judged set, with a bootstrap 95% interval; pooled over models, the judged refusal rate per band of the
    score (``SCORE_BANDS``, Wilson 95% intervals) and a logistic fit ``P(refusal) = 1 / (1 + exp(-(a + b *
    score)))``, which turns a change of the score (the causal sweep's unit) into a change of judged refusal."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from ..evaluation.stats import auroc, bootstrap_interval

    keys = [key for key, _ in JUDGED_SETS]
    cells, pooled_x, pooled_y = [], [], []
    for row in rows:
        present = [k for k in keys if k in row.scores]
        x = np.array([s for k in present for s in row.scores[k]])
        y = np.array([o for k in present for o in row.outcomes[k]], dtype=int)
        pooled_x.append(x)
        pooled_y.append(y)
        low, high = bootstrap_interval(auroc, x, y, resamples=1000)
        cells.append([row.name, f"{y.sum()}/{len(y)}", f"{auroc(x, y):.3f} [{low:.3f}, {high:.3f}]"])
    x, y = np.concatenate(pooled_x), np.concatenate(pooled_y)
    bands = []
    for low, high in zip(SCORE_BANDS, SCORE_BANDS[1:]):
        inside = (x >= low) & (x < high)
        n, k = int(inside.sum()), int(y[inside].sum())
        bands.append([f"[{low:g}, {high:g})", str(n), rate_cell(k / n, wilson_interval(k, n)) if n else "n/a"])
    fit = LogisticRegression(C=1e6).fit(x[:, None], y)
    a, b = float(fit.intercept_[0]), float(fit.coef_[0, 0])

    def judged(score: float) -> float:
        return 1 / (1 + math.exp(-(a + b * score)))

    start = next((row.refusal_score for row in rows if row.name == "finetuned"), -2.5)
    lines = [
        "# The logit refusal score against judged refusal",
        "",
        f"Run: `{run}`; every judged answer of every model ({len(y)}; {int(y.sum())} judged refusals).",
        "",
        "## Per model: AUROC of the score against judged refusal",
        "",
        markdown_table(["model", "judged refusals", "AUROC [95% bootstrap]"], cells),
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
    return "\n".join(lines)


def study_report(
    rows: Sequence,
    targets: Sequence,
    paired: Sequence,
    seconds: dict[str, float],
    categories: dict[str, Sequence[str | None]] | None = None,
) -> str:
    """``report.md``: the evaluation table, prompt counts, refusal per category of the sets in
    ``categories`` (Do-Not-Answer's risk areas), targets, paired tests and time per stage."""
    lines = ["# Restoration study", "", results_table(rows), ""]
    sizes = rows[0].n if rows else {}
    lines += ["Prompts: " + ", ".join(f"{name} {n}" for name, n in sizes.items()) + ".", ""]
    samples = max((row.samples for row in rows), default=1)
    lines += [
        f"Rates: {samples} seeded samples per prompt, a prompt's outcome the share of its samples; 95% intervals "
        "with the prompt as the unit (Wilson's with the effective number of trials); paired p-values by sign flips."
        if samples > 1
        else "Rates: one answer per prompt judged on every prompt, with Wilson 95% intervals.",
        "",
    ]
    if any(row.degenerate for row in rows):
        lines += [
            "## Complied and degenerate",
            "",
            "Every answer is judged refusal, compliance or degenerate (empty, repetitive or template only; "
            "`interp.core.judge.judge_answer`). Complied is not harm: a benign answer complies too.",
            "",
            kinds_table(rows),
            "",
        ]
    for name, labels in (categories or {}).items():
        lines += [f"## Refusal by category: {name}", ""]
        if name == "donotanswer":
            lines += ["Refusal rate = 1 - attack success rate, as keyword-judged benchmarks report it.", ""]
        lines += [category_table(rows, labels, name), ""]
    if any(row.scores and row.samples == 1 for row in rows):
        lines += [
            "## Refusal score against judged refusal",
            "",
            "The logit refusal score (log-odds that the answer's first token begins a refusal, the measure "
            "behind the causal sweep and the layer score; on a reasoning pair's study, the final answer's "
            "first token) as a classifier of the judged refusals: AUROC with bootstrap 95% intervals.",
            "",
            score_table(rows),
            "",
        ]
    if any(row.parts for row in rows):
        lines += ["## Reasoning trace and final answer", "", parts_table(rows), ""]
    if any(row.judges for row in rows):
        lines += ["## Model judges", "", judge_table(rows), ""]
    if targets:
        lines += ["## Targets", "", targets_table(targets), ""]
    if paired:
        lines += [
            "## Paired tests",
            "",
            f"Each row against {' and '.join(dict.fromkeys(t.against for t in paired))}, on the same prompts; "
            "p: exact McNemar; Holm: adjusted over the table's distinct tests.",
            "",
        ]
        lines += [paired_table(paired), ""]
    lines += ["## Time per stage", ""] + [f"- {stage}: {s:.0f} s" for stage, s in seconds.items()]
    return "\n".join(lines).rstrip() + "\n"
