"""The restoration frontier's tables (``interp.frontier``: ``frontier.md``)."""

from __future__ import annotations

from collections.abc import Sequence

from .tables import difference_cell, markdown_table, rate_cell


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
                "" if c is None else difference_cell(c.vs_all_layers),
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
            difference_cell(against[p.name]) if p.name in against else "",
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
