"""Figures. Each function takes data (already computed) and an optional ``ax``, and returns the figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax, figsize=(7, 3.6)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
        return fig, ax
    return ax.figure, ax


def _mark_selected(ax, selected: Sequence[int] | None) -> None:
    for layer in selected or ():
        ax.axvspan(layer - 0.5, layer + 0.5, color="tab:orange", alpha=0.12, lw=0)


def _layer_lines(ax, metrics: dict, series: Sequence[tuple[str, str, str]], selected: Sequence[int] | None) -> None:
    """One line per ``(metric key, line style, label)`` against the layer index; selected layers shaded."""
    for key, style, label in series:
        ax.plot(np.arange(len(metrics[key])), metrics[key], style, label=label)
    _mark_selected(ax, selected)


def plot_probe_accuracy(metrics: dict, selected: Sequence[int] | None = None, ax=None):
    """Harmful-vs-harmless probe accuracy per layer: base, fine-tuned, and base probes on fine-tuned."""
    fig, ax = _axes(ax)
    _layer_lines(
        ax,
        metrics,
        [
            ("probe_acc_base", "o-", "base (cross-validated)"),
            ("probe_acc_finetuned", "s-", "fine-tuned (cross-validated)"),
            ("probe_acc_transfer", "^--", "base probe on fine-tuned"),
        ],
        selected,
    )
    ax.set(xlabel="layer", ylabel="accuracy", ylim=(0.4, 1.02), title="Is harmfulness still decodable?")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_refusal_direction(metrics: dict, selected: Sequence[int] | None = None, ax=None):
    """Cosine of the two models' refusal directions and retention of the base direction's separation."""
    fig, ax = _axes(ax)
    _layer_lines(
        ax,
        metrics,
        [
            ("refusal_cosine", "o-", "cos(base dir, fine-tuned dir)"),
            ("retention", "s-", "separation along base dir, ft / base"),
        ],
        selected,
    )
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="layer", ylabel="ratio / cosine", title="What happened to the refusal direction?")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_amplification(metrics: dict, selected: Sequence[int] | None = None, ax=None):
    """Task-direction norm ratio (fine-tuned / base) and where harmful prompts sit along it."""
    fig, ax = _axes(ax)
    _layer_lines(
        ax,
        metrics,
        [
            ("task_amplification", "o-", "task direction norm, ft / base"),
            ("harmful_task_pull_base", "s--", "harmful along task dir (base)"),
            ("harmful_task_pull_finetuned", "s-", "harmful along task dir (ft)"),
        ],
        selected,
    )
    ax.set(xlabel="layer", title="What did fine-tuning amplify?")
    ax.legend(fontsize=8)
    return fig


def plot_causal_effects(metrics: dict, selected: Sequence[int] | None = None, ax=None):
    """Per-layer change in the harmful-prompt refusal score under each intervention."""
    fig, ax = _axes(ax)
    layers = np.arange(len(metrics["add_effect"]))
    width = 0.28
    ax.bar(layers - width, metrics["add_effect"], width, label="ft + base refusal vector")
    ax.bar(layers, metrics["patch_effect"], width, label="ft with base residual patched in")
    ax.bar(layers + width, metrics["ablate_effect"], width, label="base minus direction (drop)")
    ax.axhline(0, color="black", lw=0.8)
    _mark_selected(ax, selected)
    ax.set(xlabel="layer", ylabel="change in refusal log-odds", title="Causal effect per layer")
    ax.legend(fontsize=8)
    return fig


def plot_pca(points_base: np.ndarray, points_ft: np.ndarray, labels: np.ndarray, layer: int, axes=None):
    """2-D projections (already computed, ``[sample, 2]``) of harmful vs harmless in both models."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), constrained_layout=True, sharex=True, sharey=True)
    else:
        fig = axes[0].figure
    for ax, points, title in zip(axes, (points_base, points_ft), ("base", "fine-tuned")):
        for value, name, color in ((1, "harmful", "tab:red"), (0, "harmless", "tab:blue")):
            pick = labels == value
            ax.scatter(points[pick, 0], points[pick, 1], s=10, alpha=0.6, color=color, label=name)
        ax.set(title=f"{title}, layer {layer}", xlabel="PC 1")
    axes[0].set_ylabel("PC 2")
    axes[0].legend(fontsize=8)
    return fig


def plot_ranking(
    scores: Sequence[float], components: dict[str, Sequence[float]], selected: Sequence[int] | None = None, ax=None
):
    """Heatmap of the ranking's components and the total score per layer."""
    rows = list(components) + ["score"]
    data = np.array([np.asarray(components[r], dtype=float) for r in components] + [np.asarray(scores, float)])
    fig, ax = _axes(ax, figsize=(8, 0.5 * len(rows) + 1.4))
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xticks(range(data.shape[1]))
    ax.tick_params(axis="x", labelsize=7)
    for layer in selected or ():
        ax.add_patch(plt.Rectangle((layer - 0.5, -0.5), 1, len(rows), fill=False, ec="tab:orange", lw=2))
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set(xlabel="layer", title="Layer ranking (selected layers boxed)")
    return fig


def plot_results(rows: Sequence, ax=None):
    """Grouped bars of each rate per evaluated model (``EvalRow``s), with Wilson 95% intervals as error bars."""
    keys = [
        ("harmful_refusal", "harmful refusal"),
        ("xstest_unsafe_refusal", "XSTest unsafe refusal"),
        ("donotanswer_refusal", "Do-Not-Answer refusal"),
        ("harmless_refusal", "harmless refusal"),
        ("xstest_refusal", "XSTest safe refusal"),
        ("task_accuracy", "task accuracy"),
    ]
    keys = [(k, n) for k, n in keys if all(getattr(r, k) is not None for r in rows)]
    fig, ax = _axes(ax, figsize=(9, 3.8))
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(keys))
    for i, row in enumerate(rows):
        values = np.array([getattr(row, k) for k, _ in keys])
        intervals = [row.interval(k) or (v, v) for (k, _), v in zip(keys, values)]
        errors = np.array(  # clipped at 0: the stored rates are rounded, the bounds are not
            [[v - lo for (lo, _), v in zip(intervals, values)], [hi - v for (_, hi), v in zip(intervals, values)]]
        ).clip(min=0)
        offset = (i - (len(rows) - 1) / 2) * width
        ax.bar(x + offset, values, width, yerr=errors, capsize=1.5, error_kw={"lw": 0.7}, label=row.name)
    ax.set_xticks(x, [n for _, n in keys], fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="rate (95% CI)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_restore_history(histories: dict[str, Sequence[dict]], ax=None, draws: dict[str, Sequence[dict]] | None = None):
    """Safety loss (solid) and retain loss (dashed) per training step, one colour per restoration.

    ``histories`` maps a name to ``RestoreStats.history`` (``{"step", "safety", "retain"}`` per step);
    ``draws``, the same for random draws, drawn in grey (safety loss only) as their band.
    """
    fig, ax = _axes(ax)
    for i, history in enumerate((draws or {}).values()):
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["safety"] for h in history], color="0.75", lw=0.8, zorder=0,
                label=f"{len(draws)} random draws: safety" if i == 0 else None)  # fmt: skip
    for i, (name, history) in enumerate(histories.items()):
        steps = [h["step"] for h in history]
        color = f"C{i}"
        ax.plot(steps, [h["safety"] for h in history], color=color, label=f"{name}: safety")
        ax.plot(steps, [h["retain"] for h in history], color=color, ls="--", label=f"{name}: retain")
    ax.set(xlabel="step", ylabel="distance (L2 per position)", title="Restoration losses")
    ax.legend(fontsize=7, ncol=2)
    return fig


FRONTIER_STYLE = {  # kind -> (colour, marker, label)
    "ranked": ("tab:blue", "o", "ranked top-k"),
    "random mean": ("tab:orange", "s", "random k (mean of draws)"),
    "random": ("tab:orange", ".", "random k (each draw)"),
    "all_layers": ("tab:green", "*", "all layers"),
}


def plot_frontier(points: Sequence, axes=None):
    """The restoration frontier (``interp.frontier.FrontierPoint``s): harmful refusal against trainable
    parameters and against training seconds, over-refusal and task accuracy against parameters. Ranked
    top-k and the mean of the random draws are lines labelled with k; each draw is a dot; the all-layer
    recipe a star; base and fine-tuned dotted lines. Error bars: Wilson 95% intervals."""
    if axes is None:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    fig = np.ravel(axes)[0].figure
    panels = [
        ("harmful_refusal", "trainable_params", "harmful refusal (wanted)"),
        ("harmful_refusal", "train_seconds", "harmful refusal (wanted)"),
        ("harmless_refusal", "trainable_params", "harmless refusal (over-refusal)"),
        ("task_accuracy", "trainable_params", "task accuracy"),
    ]
    for ax, (column, x_key, title) in zip(np.ravel(axes), panels):
        for kind, (colour, marker, label) in FRONTIER_STYLE.items():
            mine = sorted((p for p in points if p.kind == kind), key=lambda p: (p.k, getattr(p, x_key)))  # lines by k
            if not mine:
                continue
            x = np.array([getattr(p, x_key) for p in mine], dtype=float)
            y = np.array([p.rates[column] for p in mine], dtype=float)
            bounds = [p.intervals[column] or (v, v) for p, v in zip(mine, y)]
            errors = np.array([[v - lo for (lo, _), v in zip(bounds, y)], [hi - v for (_, hi), v in zip(bounds, y)]])
            style = "" if kind in ("random", "all_layers") else "-"
            size = 14 if kind == "all_layers" else 6
            ax.errorbar(
                x,
                y,
                yerr=errors.clip(min=0),
                fmt=marker + style,
                color=colour,
                ms=size,
                lw=1,
                elinewidth=0.7,
                capsize=2,
                alpha=0.45 if kind == "random" else 1,
                label=label,
            )
            if kind in ("ranked", "random mean"):
                for p, xi, yi in zip(mine, x, y):
                    ax.annotate(
                        f"k={p.k}",
                        (xi, yi),
                        textcoords="offset points",
                        xytext=(3, -10 if kind != "ranked" else 4),
                        fontsize=6,
                        color=colour,
                    )
        for p in points:
            if p.kind in ("base", "finetuned"):
                ax.axhline(p.rates[column], color="grey" if p.kind == "base" else "black", ls=":", lw=0.9)
                ax.annotate(
                    p.kind, (0.005, p.rates[column]), xycoords=("axes fraction", "data"), fontsize=7, va="bottom"
                )
        ax.set_xscale("log")
        xlabel = "trainable parameters" if x_key == "trainable_params" else "training seconds (as if trained alone)"
        ax.set(xlabel=xlabel, ylabel="rate (95% CI)", title=title)
    np.ravel(axes)[0].legend(fontsize=7, loc="lower right")
    return fig


def _grid(ax, values: np.ndarray, rows: Sequence[str], title: str, cmap: str = "viridis", centre: bool = False):
    """A ``[row, layer]`` heat map (NaN cells blank) with its colour bar."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    limits = {"vmin": -top, "vmax": top} if centre else {}
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, interpolation="nearest", **limits)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(title=title, xlabel="layer")
    ax.figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01)


def plot_positions(
    lost: np.ndarray,
    rows: Sequence[str],
    induce: np.ndarray | None = None,
    bypass: np.ndarray | None = None,
    kept: np.ndarray | None = None,
    selected: tuple[int, int] | None = None,
    axes=None,
):
    """Per post-instruction position (``rows``, e.g. ``-1 '\\n'``) and layer: the separation the
    fine-tuned model lost along the base refusal direction (``lost``, any scale); with the direction
    selection, its induce and bypass scores (kept candidates outlined, the selected ``(position index,
    layer)`` starred)."""
    panels = 1 if induce is None else 3
    if axes is None:
        fig, axes = plt.subplots(panels, 1, figsize=(9, 2.3 * panels), constrained_layout=True, squeeze=False)
        axes = axes[:, 0]
    fig = axes[0].figure
    _grid(
        axes[0],
        lost,
        rows,
        "separation lost along the base refusal direction (red: lost, blue: gained)",
        "RdBu_r",
        True,
    )
    if induce is not None:
        _grid(axes[1], induce, rows, "induce: refusal score of harmless prompts, vector added (base)", "RdBu_r", True)
        _grid(
            axes[2], bypass, rows, "bypass: refusal score of harmful prompts, direction ablated (base)", "RdBu_r", True
        )
        for ax in axes[1:]:
            if kept is not None:
                for p, layer in zip(*np.nonzero(kept)):
                    ax.add_patch(plt.Rectangle((layer - 0.5, p - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
            if selected is not None:
                ax.plot(selected[1], selected[0], marker="*", color="gold", markersize=14, mec="black")
    return fig


def plot_components(lost: np.ndarray, patch: np.ndarray, chosen: Sequence[tuple[int, str]] = (), axes=None):
    """Per layer, for the attention and the MLP output (rows of ``[component, layer]`` arrays): the
    refusal separation each lost (top) and the effect of patching the base's output in (bottom);
    ``chosen`` components (``(layer, "attn" | "mlp")``) marked."""
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(9, 5), constrained_layout=True, sharex=True)
    fig = axes[0].figure
    layers = np.arange(np.shape(lost)[1])
    for ax, values, title in (
        (axes[0], lost, "refusal separation lost (written by the component, base - fine-tuned)"),
        (axes[1], patch, "patch effect on the refusal score (base component into fine-tuned)"),
    ):
        for row, (name, colour) in enumerate((("attention", "tab:blue"), ("MLP", "tab:red"))):
            ax.bar(layers + (row - 0.5) * 0.4, np.nan_to_num(values[row]), width=0.4, color=colour, label=name)
        for layer, name in chosen:
            row = ("attn", "mlp").index(name)
            ax.plot(layer + (row - 0.5) * 0.4, np.nan_to_num(values[row][layer]), "v", color="black", markersize=6)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(title=title)
    axes[0].legend(fontsize=8)
    axes[1].set(xlabel="layer (triangles: the component plan)")
    return fig


def plot_strength_sweep(sweep: dict[str, Sequence[dict]], draws: Sequence[str] = (), ax=None):
    """Harmful refusal against over-refusal along each plan's restoration (one point per checkpoint,
    labelled with its step; ``sweep``: plan -> ``[{step, harmful, safe}]``, ``base`` a single point);
    the plans named in ``draws`` in grey, without labels, as the draws' band."""
    fig, ax = _axes(ax, figsize=(6, 4.5))
    for name, points in sweep.items():
        if name == "base":
            continue
        xs, ys = [100 * p["safe"] for p in points], [100 * p["harmful"] for p in points]
        if name in draws:
            ax.plot(xs, ys, "-", color="0.7", lw=1, zorder=1)
            continue
        line = ax.plot(xs, ys, "o-", label=name, zorder=2)[0]
        for p, x, y in zip(points, xs, ys):
            ax.annotate(
                str(p["step"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, color=line.get_color()
            )
    if draws:
        ax.plot([], [], "-", color="0.7", label=f"{len(draws)} random draws")
    for p in sweep.get("base", ()):
        ax.scatter([100 * p["safe"]], [100 * p["harmful"]], marker="*", s=120, color="black", zorder=3, label="base")
        ax.axvline(100 * p["safe"], color="black", lw=0.6, ls=":")
    ax.set_xlabel("over-refusal (% of safe prompts refused)")
    ax.set_ylabel("harmful refusal (%)")
    ax.set_title("Restoration strength: refusal against over-refusal")
    ax.legend(fontsize=7)
    return fig


def plot_layer_validity(gain_mean: Sequence[float], gain_sd: Sequence[float], candidates: dict[str, Sequence[float]]):
    """Top: restoration gain of a LoRA on each single block (points, mean over seeds, seed SD as error
    bars); below it, one panel per candidate ranking's value per block, on a shared block axis."""
    fig, axes = plt.subplots(1 + len(candidates), 1, figsize=(7, 2 + 1.3 * len(candidates)), sharex=True,
                             constrained_layout=True)  # fmt: skip
    blocks = np.arange(len(gain_mean))
    axes[0].bar(blocks, 100 * np.asarray(gain_mean), yerr=100 * np.asarray(gain_sd), color="tab:blue", capsize=2)
    axes[0].set(ylabel="gain (points)", title="Restoration gain of LoRA on one block, and the candidate rankings")
    for ax, (name, values) in zip(axes[1:], candidates.items()):
        ax.bar(blocks, values, color="0.5")
        ax.set_ylabel(name, fontsize=8)
    axes[-1].set_xlabel("block")
    return fig
