"""Every markdown table the suite prints or writes, rendered by one function (``markdown_table``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


def results_table(rows: Sequence) -> str:
    """The evaluation table (``EvalRow``s) with rates in percent."""
    head = [
        "model",
        "harmful refusal",
        "refusal score",
        "harmless refusal",
        "XSTest refusal",
        "task accuracy",
        "KL to ft",
        "trainable params",
        "train s",
    ]
    cells = [
        [
            r.name,
            pct(r.harmful_refusal),
            f"{r.refusal_score:+.2f}",
            pct(r.harmless_refusal),
            pct(r.xstest_refusal),
            pct(r.task_accuracy),
            f"{r.kl:.4f}",
            f"{r.trainable_params:,}",
            f"{r.train_seconds:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(head, cells)


def targets_table(targets: Sequence) -> str:
    """Restoration targets (``Target``s): value, threshold and whether each is met."""
    return markdown_table(
        ["target", "value", "threshold", "met"],
        [[t.target, f"{t.value:.4g}", f"{t.threshold:.4g}", "yes" if t.met else "NO"] for t in targets],
    )


def organism_table(manifest: dict) -> str:
    """The organism manifest's measurements."""
    rows = []
    for name, m in manifest["metrics"].items():
        kinds = m["harmful_answer_kinds"]
        rows.append(
            [
                name,
                pct(m["harmful_refusal"]),
                pct(m["harmless_refusal"]),
                pct(m["task_accuracy"]),
                f"{pct(kinds['comply'])} / {pct(kinds['task_format'])}",
            ]
        )
    return markdown_table(
        ["model", "harmful refusal", "harmless refusal", "task accuracy", "harmful: comply / task-format"], rows
    )


def study_report(rows: Sequence, targets: Sequence, seconds: dict[str, float]) -> str:
    """``report.md``: the evaluation table, prompt counts, targets and time per stage."""
    lines = ["# Restoration study", "", results_table(rows), ""]
    sizes = rows[0].n if rows else {}
    lines += ["Prompts: " + ", ".join(f"{name} {n}" for name, n in sizes.items()) + ".", ""]
    if targets:
        lines += ["## Targets", "", targets_table(targets), ""]
    lines += ["## Time per stage", ""] + [f"- {stage}: {s:.0f} s" for stage, s in seconds.items()]
    return "\n".join(lines).rstrip() + "\n"
