"""Shared command line for the figure scripts: which run folder to read, where to write figures."""
from __future__ import annotations

import argparse
from pathlib import Path

from interp.analyze import load_run

ROOT = Path(__file__).resolve().parent.parent


def run_from_args(description: str):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "default"), help="analysis run folder")
    parser.add_argument("--figures", default=str(ROOT / "figures"), help="where to write PNG and SVG")
    args = parser.parse_args()
    return load_run(args.run), Path(args.figures)
