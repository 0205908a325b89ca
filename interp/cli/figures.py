"""``interp figures``: redraw a run folder's figures and tables from its saved results, with no model loaded."""

from __future__ import annotations


def figures_parser(sub) -> None:
    p = sub.add_parser(
        "figures",
        help="redraw a run folder's figures (PNG, SVG) and tables (markdown) from its saved results",
        description="Redraw every figure and table of the analysis (metrics.json) and the study (report.json) "
        "a run folder holds, from the saved results alone (no model loads); prints the paths written.",
    )
    p.add_argument("run", metavar="RUN_FOLDER", help="a run folder of `interp analyze` or `interp run`")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="where to write the figures and tables (default: RUN_FOLDER/figures)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NAME",
        help="only these figures or tables, e.g. probe_accuracy ranking results layer_table results_table "
        "(a name the folder has none of is an error that lists the ones it has)",
    )
    p.set_defaults(func=cmd_figures)


def cmd_figures(args) -> None:
    """Every figure and table of the run folder's results (or ``--only`` those), written into ``--out``."""
    from ..redraw import redraw

    print(*redraw(args.run, args.out, args.only), sep="\n")
