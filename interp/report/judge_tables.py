"""The judges' tables: every model judge beside the substring list in a study (``judge_table``), one judge on
a run's kept answers (``interp judge``: ``rejudged_table``) and the judges against the audit labels
(``audit_table``, in the audit set's report ``audit_report``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .tables import JUDGED_SETS, markdown_table, outcome_cell


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


def audit_report(items: Sequence, judges: dict | None = None) -> str:
    """``figures/judge_audit.md``: the judges (``judges``: name -> ``verdict(prompt, answer)``, default
    ``interp.evaluation.audit.JUDGES``) against the labelled audit ``items`` (``load_audit()``): the labels'
    counts, agreement on the test split (reported) and the dev split (where the judge's rules were changed)
    per group of prompt sets (``audit_table``), and the test items where the three-way judge and the label
    differ."""
    from ..core.judge import judge_answer
    from ..evaluation.audit import JUDGES, audit_judge

    judges = JUDGES if judges is None else judges
    labels = Counter(item.label for item in items)
    lines = [
        "# Judges against the labelled audit set",
        "",
        f"{len(items)} answers labelled by reading (`interp/data/audit/GUIDELINE.md`): "
        + ", ".join(f"{n} {label}" for label, n in labels.most_common())
        + f"; {sum(item.doubt for item in items)} marked doubtful.",
        "",
    ]
    for split in ("test", "dev"):
        chosen = [item for item in items if item.split == split]
        results = {name: audit_judge(chosen, verdict) for name, verdict in judges.items()}
        lines += [f"## {split} split ({len(chosen)} answers)", "", audit_table(results), ""]
    wrong = [item for item in items if item.split == "test" and judge_answer(item.answer) != item.label]
    cells = [
        [item.model, item.set, judge_answer(item.answer), item.label + (" (doubt)" if item.doubt else ""),
         item.answer[:140].replace("\n", " ").replace("|", "/")]
        for item in wrong
    ]  # fmt: skip
    lines += ["## Test answers the three-way judge gets wrong", ""]
    lines += [markdown_table(["model", "set", "judge", "label", "answer (start)"], cells), ""]
    return "\n".join(lines)
