"""Every markdown table the suite prints or writes, rendered by one function (``markdown_table``), and the cells
the tables share (a rate with its interval, a paired difference).

The tables themselves, by what they render: the organism's measurements and the restoration study's report
(``interp.report.study_tables``), the analysis (``interp.report.analysis_tables``), the judges
(``interp.report.judge_tables``) and the restoration frontier (``interp.report.frontier_tables``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..evaluation.stats import rate_interval


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: one header row, then one line per row of already formatted cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def rate_cell(value: float | None, interval: tuple[float, float] | None) -> str:
    """``74.4% [64.1, 82.6]``: a rate with its 95% interval, in percent."""
    if value is None:
        return "n/a"
    return pct(value) if interval is None else f"{pct(value)} [{interval[0]:.1%}, {interval[1]:.1%}]".replace("%,", ",")


def outcome_cell(values: Sequence[float] | None, samples: int = 1) -> str:
    """The rate behind per-prompt outcomes (0/1, or shares of ``samples`` samples) with its 95% interval
    (``interp.evaluation.stats.rate_interval``; ``n/a`` without outcomes)."""
    if not values:
        return "n/a"
    return rate_cell(sum(values) / len(values), rate_interval(values, samples))


def difference_cell(test) -> str:
    """``+4.0 [+0.7, +7.4] p=0.036 (Holm 0.41)``: a ``PairedTest``'s difference in points, interval, McNemar
    p and, where the test has one, its Holm-adjusted p."""
    low, high = (100 * x for x in test.interval)
    holm = "" if getattr(test, "holm_p", None) is None else f" (Holm {test.holm_p:.2g})"
    return f"{100 * test.difference:+.1f} [{low:+.1f}, {high:+.1f}] p={test.p_value:.2g}{holm}"


# The judged sets (every set of the suite but the task), by name, with their labels in the tables
JUDGED_SETS = (
    ("harmful", "harmful"),
    ("xstest_unsafe", "XSTest unsafe"),
    ("donotanswer", "Do-Not-Answer"),
    ("harmless", "harmless"),
    ("xstest", "XSTest safe"),
)
