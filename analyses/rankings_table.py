"""The claim under each ranking: one row per protocol run of the same organism (``interp.protocol.family``),
the layer map's score and the rankings of protocol amendment 7 (``interp protocol --ranking``).

    python analyses/rankings_table.py "layer map score=runs/protocol-test" "patch effect=runs/protocol-patch" \
        [--out figures/rankings.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interp.io.atomic import atomic_write_text
from interp.protocol.family import family_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER: a protocol run and the ranking it used")
    parser.add_argument("--out", default="figures/rankings.md")
    args = parser.parse_args()
    if any("=" not in run for run in args.runs):
        parser.error("every run is NAME=FOLDER")
    folders = dict(run.split("=", 1) for run in args.runs)
    text = "\n".join([
        "# The pre-registered test under each ranking (test parts)",
        "",
        "`python analyses/rankings_table.py " + " ".join(f'"{run}"' for run in args.runs) + "`: per protocol run,"
        " the ranked plan's rank among each seed's 19 draws (top 10% = rank 1 or 2), ranked - draws with its 95%"
        " interval and Holm p at judged refusal (H1) and at the base's over-refusal (H2a), and ranked - all"
        " layers (H3) and - the released recipe (H4).",
        "",
        family_table(folders, first="ranking"),
        "",
    ])  # fmt: skip
    atomic_write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
