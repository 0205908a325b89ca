"""The pre-registered claim side by side: one row per protocol run (``interp.protocol.family``). Either runs
of one organism under different rankings (protocol amendment 7, ``interp protocol --ranking``), or runs of
different organisms (``--organisms``: the README's per-organism table; ``interp protocol --family`` writes
the same rows for the organisms it ran, this adds the default pair's run, which lives in ``figures/``).

    python analyses/rankings_table.py "layer map score=figures" "patch effect=figures/rankings/patch-effect" \
        [--out figures/rankings.md]
    python analyses/rankings_table.py --organisms "default=figures" "reasoning=figures/family/reasoning" \
        --out figures/organisms.md
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from interp.config_file import run_dtype
from interp.io.atomic import atomic_write_text
from interp.protocol.family import family_table

TITLES = {
    "ranking": "# The pre-registered test under each ranking (test parts)",
    "organism": "# The pre-registered test on each organism (test parts)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER: a protocol run and its ranking (or organism)")
    parser.add_argument("--organisms", action="store_true", help="the runs are of different organisms")
    parser.add_argument("--out", default=None, help="default: figures/rankings.md (figures/organisms.md)")
    args = parser.parse_args()
    if any("=" not in run for run in args.runs):
        parser.error("every run is NAME=FOLDER")
    folders = dict(run.split("=", 1) for run in args.runs)
    first = "organism" if args.organisms else "ranking"
    out = Path(args.out or f"figures/{first}s.md")
    command = " ".join(["python analyses/rankings_table.py", *(["--organisms"] if args.organisms else []),
                        *map(shlex.quote, args.runs)])  # fmt: skip
    text = "\n".join([
        TITLES[first],
        "",
        f"`{command}`: per protocol run, the ranked plan's rank among each seed's draws (top 10% of the plans"
        " compared), ranked - draws with its 95% interval and Holm p at judged refusal (H1) and at the base's"
        " over-refusal (H2a), and ranked - all layers (H3) and - the released recipe (H4).",
        "",
        family_table(folders, first=first, dtypes={name: run_dtype(folder) for name, folder in folders.items()}),
        "",
    ])  # fmt: skip
    atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
