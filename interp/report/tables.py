"""Every markdown table the suite prints or writes, rendered by one function (``markdown_table``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..evaluation.stats import rate_interval, wilson_interval
from ..measures.positions import KL_BOUNDS


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: one header row, then one line per row of already formatted cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def per_layer_table(per_layer: dict[str, np.ndarray], scores: Sequence[float], selected: Sequence[int]) -> str:
    """The per-layer measures and the ranking score (``per_layer``: metrics and causal effects by name);
    selected layers starred."""
    columns = [
        ("probe base", "probe_acc_base"),
        ("probe ft", "probe_acc_finetuned"),
        ("transfer", "probe_acc_transfer"),
        ("cos(r_b,r_f)", "refusal_cosine"),
        ("retention", "retention"),
        ("task amp", "task_amplification"),
        ("patch", "patch_effect"),
        ("add", "add_effect"),
    ]
    rows = []
    for layer, score in enumerate(scores):
        values = [per_layer[key][layer] for _, key in columns] + [score]
        cells = ["" if not np.isfinite(v) else f"{v:.3f}" for v in values]
        rows.append([f"{layer}{' *' if layer in selected else ''}", *cells])
    return markdown_table(["layer", *(c for c, _ in columns), "score"], rows)


def component_table(attribution, chosen: int = 0, top: int = 8) -> str:
    """The ``top`` components by score (``ComponentAttribution``): what each wrote along the base refusal
    direction in both models, the loss, the patching effect, the task amplification; the first ``chosen``
    (those the component map restores) starred."""
    rows = []
    for rank, (layer, name) in enumerate(attribution.ranked()[:top]):
        c = ("attn", "mlp").index(name)
        values = [
            attribution.written_base[c, layer],
            attribution.written_finetuned[c, layer],
            attribution.lost[c, layer],
            attribution.patch_effect[c, layer],
            attribution.amplification[c, layer],
            attribution.score[c, layer],
        ]
        star = " *" if rank < chosen else ""
        rows.append([f"{layer} {name}{star}", *("" if not np.isfinite(v) else f"{v:.3f}" for v in values)])
    head = ["component", "written base", "written ft", "lost", "patch", "task amp", "score"]
    return markdown_table(head, rows)


def position_table(positions) -> str:
    """Per post-instruction position (``PositionMetrics``): its token, where suppression peaks, the mean
    retention over layers, and the best layer's probe transfer."""
    rows = []
    for label, token, metrics in zip(positions.positions, positions.tokens, positions.metrics):
        lost = metrics.separation_base - metrics.separation_finetuned
        peak = int(np.nanargmax(lost))
        rows.append(
            [
                label,
                repr(token),
                f"{np.nanmax(metrics.separation_base):.2f}",
                f"{peak}",
                f"{metrics.retention[peak]:.3f}",
                f"{np.nanmean(metrics.retention):.3f}",
                f"{np.nanmax(metrics.probe_acc_finetuned):.3f}",
                f"{metrics.probe_acc_transfer[peak]:.3f}",
            ]
        )
    head = [
        "position",
        "token",
        "max separation (base)",
        "most lost at layer",
        "retention there",
        "mean retention",
        "best probe ft",
        "transfer there",
    ]
    return markdown_table(head, rows)


def selection_table(selection, top: int = 5) -> str:
    """The direction selection (``DirectionSelection``): the selected candidate first, then the next
    candidates by ``bypass`` that were scored, each with whether it passes the filter."""
    kept = selection.kept
    scored = [
        (p, layer)
        for p in range(len(selection.positions))
        for layer in range(selection.bypass.shape[1])
        if np.isfinite(selection.bypass[p, layer])
    ]
    scored.sort(key=lambda pl: selection.bypass[pl])
    rows = []
    for p, layer in scored[:top]:
        mark = (
            " (selected)"
            if (layer, selection.positions[p]) == (selection.selected_layer, selection.selected_position)
            else ""
        )
        rows.append(
            [
                f"{layer}, {selection.positions[p]}{mark}",
                f"{selection.bypass[p, layer]:+.2f}",
                f"{selection.induce[p, layer]:+.2f}",
                f"{selection.kl[p, layer]:.3f}",
                "yes" if kept[p, layer] else "no",
            ]
        )
    note = (
        f"Refusal score without edits: harmful {selection.score_harmful:+.2f}, "
        f"harmless {selection.score_harmless:+.2f} ({selection.n_harmful} + {selection.n_harmless} prompts); "
        f"candidates at layers < {selection.max_layer}; {int(np.isfinite(selection.induce).sum())} scored for "
        f"induce, {len(scored)} of them for bypass and KL; filter induce > 0, KL < {selection.kl_max:g}"
    )
    if selection.kl_max > KL_BOUNDS[0]:
        note += f" (no candidate passed Arditi et al.'s {KL_BOUNDS[0]:g}: the bound was raised)"
    if selection.selected_layer is None:
        note += "; no candidate passes at any bound"
    return markdown_table(["layer, position", "bypass", "induce", "KL", "kept"], rows) + "\n\n" + note + "."


def rate_cell(value: float | None, interval: tuple[float, float] | None) -> str:
    """``74.4% [64.1, 82.6]``: a rate with its 95% interval, in percent."""
    if value is None:
        return "n/a"
    return pct(value) if interval is None else f"{pct(value)} [{interval[0]:.1%}, {interval[1]:.1%}]".replace("%,", ",")


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
        cells = [_difference_cell(by[col]) if col in by else "" for _, col in columns]
        rows.append([f"{model} vs {against}", *cells])
    return markdown_table(["comparison (points)", *(name for name, _ in columns)], rows)


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


def outcome_cell(values: Sequence[float] | None, samples: int = 1) -> str:
    """The rate behind per-prompt outcomes (0/1, or shares of ``samples`` samples) with its 95% interval
    (``interp.evaluation.stats.rate_interval``; ``n/a`` without outcomes)."""
    if not values:
        return "n/a"
    return rate_cell(sum(values) / len(values), rate_interval(values, samples))


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


JUDGED_SETS = (
    ("harmful", "harmful"),
    ("xstest_unsafe", "XSTest unsafe"),
    ("donotanswer", "Do-Not-Answer"),
    ("harmless", "harmless"),
    ("xstest", "XSTest safe"),
)


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


def judge_table(rows: Sequence) -> str:
    """Every model judge's rates per model (``EvalRow.judges``: refusal rate for a refusal judge, unsafe
    rate for a harm judge; 95% intervals: ``outcome_cell``) beside the substring list's, and their agreement on
    "did the model comply?" over every judged answer of the row: Cohen's kappa and the confusion matrix
    (rows: substring refused / complied; columns: the judge's refused-or-safe / complied-or-unsafe)."""
    from ..core.judges import agreement

    sets = JUDGED_SETS
    head = ["model", "judge", *(label for _, label in sets), "kappa vs substring", "confusion", "unparsed"]
    cells = []
    for row in rows:
        for name, judged in (row.judges or {}).items():
            outcomes, kind = judged["outcomes"], judged["kind"]
            rates = [outcome_cell(outcomes.get(key), row.samples) for key, _ in sets]
            mine, theirs = [], []
            for sample in judged.get("per_sample") or [{"substring": row.outcomes, "judge": outcomes}]:
                for key, decisions in sample["judge"].items():
                    mine += [not refused for refused in sample["substring"][key]]
                    theirs += [bool(x) if kind == "harm" else not x for x in decisions]
            both = agreement("substring", mine, name, theirs)
            kappa = "n/a" if both.kappa != both.kappa else f"{both.kappa:.2f}"
            cells.append(
                [
                    row.name,
                    f"{name} ({kind})",
                    *rates,
                    kappa,
                    str(both.confusion),
                    str(sum(judged["unparsed"].values())),
                ]
            )
    return markdown_table(head, cells)


def rejudged_table(rejudged) -> str:
    """One judge on a run's kept answers (``interp.evaluation.rejudge.Rejudged``): per row its rate on
    every judged set (refusal, or unsafe, by the judge's kind; 95% intervals: ``outcome_cell``) and its
    agreement with the substring judge on "did the model comply?" over every judged answer of the row."""
    from ..core.judges import agreement

    present = [(key, label) for key, label in JUDGED_SETS if any(key in d for d in rejudged.decisions.values())]
    cells = []
    for row, decisions in rejudged.decisions.items():
        mine = [x for key, _ in present for sample in rejudged.complied[row][key] for x in sample]
        theirs = [x for key, _ in present for sample in rejudged.substring_complied[row][key] for x in sample]
        both = agreement("substring", theirs, rejudged.judge, mine)
        kappa = "n/a" if both.kappa != both.kappa else f"{both.kappa:.2f}"
        rates = [outcome_cell(decisions.get(key), rejudged.samples[row]) for key, _ in present]
        cells.append([row, *rates, kappa, str(both.confusion), str(rejudged.unparsed[row])])
    what = "refusal" if rejudged.kind == "refusal" else "unsafe"
    head = ["model", *(f"{what}: {label}" for _, label in present), "kappa vs substring", "confusion", "unparsed"]
    return markdown_table(head, cells)


def audit_table(results: dict[str, dict]) -> str:
    """Judges against the audit labels (``interp.evaluation.audit.audit_judge`` per judge name): per judge
    and group of sets, refusal precision, recall and kappa, degenerate recall, three-way accuracy, with
    bootstrap 95% intervals."""

    def cell(value) -> str:
        point, (low, high) = value
        return "n/a" if point != point else f"{point:.2f} [{low:.2f}, {high:.2f}]"

    cells = []
    for judge, groups in results.items():
        for group, r in groups.items():
            cells.append(
                [
                    judge,
                    group,
                    f"{r['n']} ({r['doubts']} doubtful)",
                    str(r["refusal"]["positives"]),
                    cell(r["refusal"]["precision"]),
                    cell(r["refusal"]["recall"]),
                    cell(r["refusal"]["kappa"]),
                    str(r["degenerate"]["positives"]),
                    cell(r["degenerate"]["recall"]),
                    cell(r["degenerate"]["precision"]),
                    f"{r['accuracy']:.2f}",
                ]
            )
    head = [
        "judge",
        "answers to",
        "n",
        "labelled refusals",
        "refusal precision",
        "refusal recall",
        "refusal kappa",
        "labelled degenerate",
        "degenerate recall",
        "degenerate precision",
        "three-way accuracy",
    ]
    return markdown_table(head, cells)


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
            "The logit refusal score (first-token log-odds of a refusal, the measure behind the causal sweep "
            "and the layer score) as a classifier of the judged refusals: AUROC with bootstrap 95% intervals.",
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


def _difference_cell(test) -> str:
    """``+4.0 [+0.7, +7.4] p=0.036 (Holm 0.41)``: a ``PairedTest``'s difference in points, interval, McNemar
    p and, where the test has one, its Holm-adjusted p."""
    low, high = (100 * x for x in test.interval)
    holm = "" if getattr(test, "holm_p", None) is None else f" (Holm {test.holm_p:.2g})"
    return f"{100 * test.difference:+.1f} [{low:+.1f}, {high:+.1f}] p={test.p_value:.2g}{holm}"


def frontier_table(points: Sequence, comparisons: Sequence) -> str:
    """The frontier (``FrontierPoint``s and ``KComparison``s of ``interp.frontier``): per model its cost and
    rates with Wilson 95% intervals; per ranked top-k its difference to the all-layer recipe and to the
    random draws of the same k (pooled: mean refusal of the draws per prompt; rank 1 = best)."""
    by_name = {c.ranked: c for c in comparisons}
    order = {"base": 0, "finetuned": 1, "ranked": 2, "random mean": 3, "all_layers": 4}
    shown = sorted((p for p in points if p.kind in order), key=lambda p: (p.kind == "all_layers", p.k, order[p.kind]))
    rows = []
    for p in shown:
        c = by_name.get(p.name)
        rows.append(
            [
                p.name,
                f"{p.trainable_params:,}",
                f"{p.train_seconds:.0f}",
                *(rate_cell(p.rates[col], p.intervals[col]) for col in ("harmful_refusal", "harmless_refusal")),
                rate_cell(p.rates["task_accuracy"], p.intervals["task_accuracy"]),
                "" if c is None else _difference_cell(c.vs_all_layers),
                ""
                if c is None or not c.random
                else "{:+.1f} [{:+.1f}, {:+.1f}]".format(
                    100 * c.vs_random_pooled, *(100 * x for x in c.vs_random_pooled_interval)
                ),
                "" if c is None or not c.random else f"{c.rank} of {len(c.random) + 1}",
            ]
        )
    head = [
        "model",
        "trainable params",
        "train s (alone)",
        "harmful refusal",
        "harmless refusal",
        "task accuracy",
        "vs all layers (harmful, points)",
        "vs random-k pooled (points)",
        "rank among draws",
    ]
    return markdown_table(head, rows)


def frontier_draws_table(points: Sequence, comparisons: Sequence) -> str:
    """Every random draw of the frontier with its rates and the ranked top-k of the same k against it."""
    against = {t.against: t for c in comparisons for t in c.vs_random}
    rows = [
        [
            p.name,
            f"{p.train_seconds:.0f}",
            *(rate_cell(p.rates[col], p.intervals[col]) for col in ("harmful_refusal", "harmless_refusal")),
            rate_cell(p.rates["task_accuracy"], p.intervals["task_accuracy"]),
            _difference_cell(against[p.name]) if p.name in against else "",
        ]
        for p in sorted((p for p in points if p.kind == "random"), key=lambda p: p.k)
    ]
    head = [
        "random draw",
        "train s (alone)",
        "harmful refusal",
        "harmless refusal",
        "task accuracy",
        "ranked top-k minus draw",
    ]
    return markdown_table(head, rows)


def frontier_report(frontier) -> str:
    """``frontier.md``: the frontier table, the draws, and the smallest k that matches the all-layer recipe."""
    sizes = frontier.rows[0].n if frontier.rows else {}
    none = "none of the ks tried"
    same, within = frontier.smallest_k("indistinguishable"), frontier.smallest_k("within")
    lines = [
        "# Restoration frontier",
        "",
        frontier_table(frontier.points, frontier.comparisons),
        "",
        "Prompts: " + ", ".join(f"{name} {n}" for name, n in sizes.items()) + ". Rates: greedy answers judged "
        "on every prompt, Wilson 95% intervals; differences: paired bootstrap 95% interval and exact McNemar p.",
        "",
        f"- Smallest ranked k whose harmful refusal is not distinguishable from the all-layer recipe's "
        f"(interval of the difference contains 0): {same if same is not None else none}.",
        f"- Smallest ranked k within 5 points of it (interval's lower end above -5 points): "
        f"{within if within is not None else none}.",
        "",
        "## Random draws",
        "",
        frontier_draws_table(frontier.points, frontier.comparisons),
    ]
    return "\n".join(lines).rstrip() + "\n"
