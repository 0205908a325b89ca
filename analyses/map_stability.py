"""How stable is the layer map across organisms built by one recipe at different seeds? (organism family issue:
the top-3 overlap of the ranking across the default recipe's seeds.)

For each named ``layer_map.json``: its top 3 by the exported score and by the raw patch effect (the candidate the
layers study chose on dev, ``interp.protocol.layers``). For every two of them: how many of the top 3 (and top 6)
they share, and the Spearman rho of the 30 per-block values with a 95% interval from a bootstrap over blocks
(``interp.evaluation.stats.bootstrap_interval``). Reads the files only, no model.

    interp run --recipe seed-1 --out runs/seed-1      # each organism's analysis (and its quick study)
    python analyses/map_stability.py "default=figures/layer_map.json" \
        "seed-1=runs/seed-1/layer_map.json" "seed-2=runs/seed-2/layer_map.json" --out figures/organisms/stability.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
from pathlib import Path

import numpy as np

from interp.evaluation.stats import bootstrap_interval, spearman
from interp.io.atomic import atomic_write_text
from interp.protocol.layers import top_k
from interp.report.tables import markdown_table

RANKINGS = {"layer map score": lambda m: m["scores"], "patch effect": lambda m: m["metrics"]["patch_effect"]}


def stability(maps: dict[str, dict]) -> str:
    """The markdown tables of the module docstring."""
    tops = [[name] + [str(top_k(get(m), 3)) for get in RANKINGS.values()] for name, m in maps.items()]
    pairs = []
    for (a, ma), (b, mb) in itertools.combinations(maps.items(), 2):
        for ranking, get in RANKINGS.items():
            x, y = np.nan_to_num(np.asarray(get(ma), dtype=float)), np.nan_to_num(np.asarray(get(mb), dtype=float))
            low, high = bootstrap_interval(spearman, x, y)
            shared = [len(set(top_k(x, k)) & set(top_k(y, k))) for k in (3, 6)]
            pairs.append([f"{a} / {b}", ranking, f"{shared[0]} of 3", f"{shared[1]} of 6",
                          f"{spearman(x, y):+.2f} [{low:+.2f}, {high:+.2f}]"])  # fmt: skip
    return "\n".join([
        markdown_table(["organism", *(f"top 3, {r}" for r in RANKINGS)], tops),
        "",
        markdown_table(["pair", "ranking", "top 3 shared", "top 6 shared", "Spearman rho over blocks [95% CI]"], pairs),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("maps", nargs="+", help="NAME=PATH: an organism's layer_map.json")
    parser.add_argument("--out", default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    if len(args.maps) < 2 or any("=" not in m for m in args.maps):
        parser.error("give at least two NAME=PATH (a layer_map.json)")
    maps = {}
    for item in args.maps:
        name, path = item.split("=", 1)
        try:
            maps[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            parser.error(f"{path} cannot be read as a layer map ({error})")
    lengths = {len(m["scores"]) for m in maps.values()}
    if len(lengths) != 1:
        parser.error(f"the maps have different numbers of layers: {sorted(lengths)}")
    command = " ".join(["python analyses/map_stability.py", *map(shlex.quote, args.maps)])
    text = f"# The layer map across organisms\n\n`{command}`\n\n{stability(maps)}\n"
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)


if __name__ == "__main__":
    main()
