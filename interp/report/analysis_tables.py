"""The analysis's tables (stage 1, ``interp.analyze``): the per-layer measures and the layer score, the components,
the post-instruction positions and the refusal-direction selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..measures.positions import KL_BOUNDS
from .tables import markdown_table


def per_layer_table(
    per_layer: dict[str, np.ndarray], scores: Sequence[float], selected: Sequence[int], spread=None
) -> str:
    """The per-layer measures and the ranking score (``per_layer``: metrics and causal effects by name);
    selected layers starred. With ``spread`` (``interp.measures.layer_map.ScoreSpread``), the score's 95%
    interval over prompt resamples and each layer's share of resamples in the top k, then how often the
    top k is the map's."""
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
        if spread is not None:
            cells += [f"[{spread.low[layer]:.3f}, {spread.high[layer]:.3f}]", f"{spread.top_k_share[layer]:.0%}"]
        rows.append([f"{layer}{' *' if layer in selected else ''}", *cells])
    head = ["layer", *(c for c, _ in columns), "score"]
    if spread is None:
        return markdown_table(head, rows)
    head += ["score 95% interval", f"in the top {spread.k}"]
    n = spread.n_prompts
    causal = f"{n['causal']} causal" if n["causal"] else "the causal term held at its estimate"
    return (
        markdown_table(head, rows)
        + f"\n\nOver {spread.resamples} resamples of the prompts ({n['harmful']} harmful, {n['harmless']} harmless,"
        f" {n['task']} task, {causal}), the top {spread.k} is the map's in {spread.same_top_k:.0%} of them"
        " (`interp.measures.layer_map.score_spread`)."
    )


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
