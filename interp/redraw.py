"""Redraw a run folder: every figure and table of the results it holds, from its saved files alone (no model).

An analysis (``metrics.json``: ``interp analyze``, ``interp run``) gives the analysis figures
(``interp.report.figures.analysis_figures``) and ``layer_table.md`` (``analysis_tables``); a study
(``report.json``: ``interp run``) gives the study figures (``study_figures``) and ``results_table.md``
(``study_tables``). ``interp figures`` runs ``redraw``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .analyze import layer_table
from .errors import ConfigError
from .io.atomic import atomic_write_text
from .measures.result import AnalysisResult
from .report.figures import analysis_figures, study_figures, write_figures
from .report.study_tables import paired_table, results_table, targets_table
from .study import StudyResult


def analysis_tables(result: AnalysisResult) -> dict[str, Callable[[], str]]:
    """Name -> a function that writes the table (markdown): ``layer_table``, the per-layer measures and the
    ranking score (selected layers starred), the selected layers and the steering check."""

    def layers() -> str:
        lines = [
            layer_table(result),
            "",
            f"selected layers: {result.layer_map.selected_layers}; best add layer {result.steer_layer}",
        ]
        s = result.steering
        if s is None:
            return "\n".join([*lines, "no generation check in this run (see report.md's steering row)"])
        lines += [
            f"steering check at layer {s.layer} on {s.n_harmful} harmful / {s.n_harmless} harmless prompts:",
            f"  fine-tuned: harmful refusal {s.finetuned_harmful_refusal:.1%}, "
            f"harmless {s.finetuned_harmless_refusal:.1%}",
        ]
        lines += [
            f"  + {row['scale']:g} x base refusal vector: harmful {row['harmful_refusal']:.1%}, "
            f"harmless {row['harmless_refusal']:.1%}"
            for row in s.steered
        ]
        return "\n".join(lines)

    return {"layer_table": layers}


def study_tables(study: StudyResult) -> dict[str, Callable[[], str]]:
    """Name -> a function that writes the table (markdown): ``results_table``, the evaluation table of every
    model (with intervals), the evaluation prompts, the targets and the paired tests."""

    def results() -> str:
        parts = [results_table(study.rows)]
        if prompts := study.details.get("prompts", {}).get("evaluation"):
            parts.append("prompts: " + ", ".join(f"{k} {v}" for k, v in prompts.items()))
        return "\n\n".join([*parts, targets_table(study.targets), paired_table(study.paired)])

    return {"results_table": results}


def redraw(folder: str | Path, out: str | Path | None = None, only: Sequence[str] = ()) -> list[Path]:
    """Write every figure (PNG and SVG) and table (``NAME.md``) of the analysis and the study ``folder``
    holds, or only those named in ``only``, into ``out`` (default ``folder / "figures"``); returns the paths.
    A folder with neither result, or a name it has no figure or table for, is a ``ConfigError`` before
    anything is written."""
    folder = Path(folder)
    figures, tables = {}, {}
    if (folder / "metrics.json").exists():
        analysis = AnalysisResult.load(folder)
        figures |= analysis_figures(analysis)
        tables |= analysis_tables(analysis)
    if (folder / "report.json").exists():
        study = StudyResult.load(folder)
        figures |= study_figures(study.rows, study.histories)
        tables |= study_tables(study)
    if not figures:
        raise ConfigError(
            f"{folder} holds no analysis (metrics.json) and no study (report.json); "
            "give a folder of `interp analyze` or `interp run`"
        )
    unknown = sorted(set(only) - set(figures) - set(tables))
    if unknown:
        raise ConfigError(f"{folder} has no figure or table {unknown}; it has {', '.join([*figures, *tables])}")
    names = list(dict.fromkeys(only)) or [*figures, *tables]
    out = folder / "figures" if out is None else Path(out)
    drawn = [name for name in names if name in figures]
    paths = write_figures(figures, out, drawn) if drawn else []
    for name in (name for name in names if name in tables):
        paths.append(atomic_write_text(out / f"{name}.md", tables[name]() + "\n"))
    return paths
