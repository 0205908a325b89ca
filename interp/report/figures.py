"""The figure registry: every figure the suite writes, by name, from typed results.

``analysis_figures`` draws from an ``AnalysisResult``; ``study_figures`` from the evaluation rows and the
restorations' loss histories. ``interp analyze``, ``interp run`` and ``interp figures`` (``interp.redraw``) all
go through ``write_figures``, so a figure has one name and one look everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..errors import ConfigError
from ..io.atomic import atomic_path
from ..measures.layer_map import score_components
from ..measures.result import AnalysisResult
from . import plots

ANALYSIS_FIGURES = (
    "probe_accuracy",
    "refusal_direction",
    "amplification",
    "causal_effects",
    "ranking",
    "pca",
    "positions",
    "components",
)
STUDY_FIGURES = ("results", "restore_history")


def analysis_figures(result: AnalysisResult) -> dict[str, Callable[[], plt.Figure]]:
    """Name -> a function that draws the figure (nothing is drawn until it is called)."""
    per_layer = result.metrics.as_dict() | result.sweep.effects()
    selected = result.layer_map.selected_layers
    pca = result.pca
    figures = {
        "probe_accuracy": lambda: plots.plot_probe_accuracy(per_layer, selected),
        "refusal_direction": lambda: plots.plot_refusal_direction(per_layer, selected),
        "amplification": lambda: plots.plot_amplification(per_layer, selected),
        "causal_effects": lambda: plots.plot_causal_effects(per_layer, selected),
        "ranking": lambda: plots.plot_ranking(
            result.layer_map.scores, score_components(result.metrics, result.sweep), selected
        ),
        "pca": lambda: plots.plot_pca(pca.base, pca.finetuned, pca.labels, pca.layer),
    }
    if (positions := result.positions) is not None:
        rows = [f"{label} {token!r}" for label, token in zip(positions.positions, positions.tokens)]
        base = positions.grid("separation_base")  # [position, layer]; lost in units of each position's largest
        lost = (base - positions.grid("separation_finetuned")) / np.abs(base).max(axis=1, keepdims=True)
        selection = result.selection
        chosen = None
        if selection is not None and selection.selected_layer is not None:
            chosen = (selection.positions.index(selection.selected_position), selection.selected_layer)
        grids = {} if selection is None else {"induce": selection.induce, "bypass": selection.bypass}
        figures["positions"] = lambda: plots.plot_positions(
            lost, rows, kept=None if selection is None else selection.kept, selected=chosen, **grids
        )
    if (parts := result.components) is not None:
        k = int(result.config.get("k", 0))
        figures["components"] = lambda: plots.plot_components(parts.lost, parts.patch_effect, parts.ranked()[:k])
    return figures


def study_figures(rows: Sequence, histories: Mapping[str, Sequence[dict]]) -> dict[str, Callable[[], plt.Figure]]:
    """``rows``: ``EvalRow``s; ``histories``: row name -> ``RestoreStats.history``."""
    return {
        "results": lambda: plots.plot_results(rows),
        "restore_history": lambda: plots.plot_restore_history(dict(histories)),
    }


def save_figure(fig, folder: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` into ``folder``, atomically; returns the paths."""
    paths = []
    for suffix in ("png", "svg"):
        path = Path(folder) / f"{name}.{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, format=suffix)
        paths.append(path)
    return paths


def write_figures(
    figures: Mapping[str, Callable[[], plt.Figure]], folder: str | Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Draw the registry's figures (or only ``names``), save each as PNG and SVG, close them."""
    unknown = sorted(set(names or ()) - set(figures))
    if unknown:
        raise ConfigError(f"unknown figures {unknown}; known: {', '.join(figures)}")
    paths = []
    for name in names or figures:
        fig = figures[name]()
        paths += save_figure(fig, folder, name)
        plt.close(fig)
    return paths
