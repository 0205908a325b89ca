"""Shared command line for the figure and table scripts: which run folder to read, where to write figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from interp import AnalysisResult, StudyResult
from interp.report.figures import analysis_figures, study_figures, write_figures

ROOT = Path(__file__).resolve().parent.parent


def args_from(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "default"), help="run folder")
    parser.add_argument("--figures", default=str(ROOT / "figures"), help="where to write PNG and SVG")
    return parser.parse_args()


def analysis_figure(name: str, description: str) -> None:
    """Draw one figure of the registry from the analysis in a run folder (``interp analyze`` / ``interp run``)."""
    args = args_from(description)
    print(*write_figures(analysis_figures(AnalysisResult.load(args.run)), args.figures, [name]), sep="\n")


def study_figure(name: str, description: str) -> None:
    """Draw one figure of the registry from the study in a run folder (``interp run``)."""
    args = args_from(description)
    study = StudyResult.load(args.run)
    print(*write_figures(study_figures(study.rows, study.histories), args.figures, [name]), sep="\n")
