"""Agreement of two runs of the same study that differ in compute dtype (float32 and bfloat16): does the
dtype change what the study finds?

Reads two run folders written by ``interp run`` (``report.json``, ``layer_map.json``) with the same suite,
for example::

    interp run --full --dtype float32 --out runs/full-fp32
    interp run --full --dtype bfloat16 --out runs/full-bf16
    python benchmarks/dtype_agreement.py runs/full-fp32 runs/full-bf16

and prints, per row of the evaluation table (the same model or plan in both runs; the restoration rows
are trained in each dtype) and per prompt set: the prompts judged the same in both runs (share), the two
rates, the discordant prompts and McNemar's exact p-value for the difference, then the two layer maps'
top-k and ranking overlap. Targets (issue 28): >= 98% of judgments identical per row, the same top-k, no
restoration row's harmful refusal distinguishable (p >= 0.05) from its float32 value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from interp.evaluation.stats import discordant, mcnemar_exact

SETS = ("harmful", "xstest_unsafe", "donotanswer", "harmless", "xstest", "task")


def load(folder: Path) -> tuple[dict, dict, str]:
    report = json.loads((folder / "report.json").read_text())
    layer_map = json.loads((folder / "layer_map.json").read_text())
    dtype = "?"
    config = folder / "config.toml"
    if config.is_file():
        for line in config.read_text().splitlines():
            if line.startswith("dtype = "):
                dtype = line.split("=", 1)[1].strip().strip('"')
    return report, layer_map, dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the float32 run folder")
    parser.add_argument("other", type=Path, help="the bfloat16 run folder")
    args = parser.parse_args()
    (ref, ref_map, ref_dtype), (other, other_map, other_dtype) = load(args.reference), load(args.other)
    print(f"{args.reference} ({ref_dtype}) against {args.other} ({other_dtype})\n")

    rows = {row["plan"]: row for row in other["models"]}  # by plan: a plan's layers may differ between maps
    print("| row | set | n | same | rate (ref) | rate (other) | only ref / only other | McNemar p |")
    print("|---|---|---|---|---|---|---|---|")
    worst, restored_p = 1.0, []
    for row in ref["models"]:
        mine = rows.get(row["plan"])
        if mine is None:
            print(f"| {row['name']} | (not in {args.other}) | | | | | | |")
            continue
        label = row["name"] if row["name"] == mine["name"] else f"{row['name']} / {mine['name']}"
        for name in SETS:
            a, b = row["outcomes"].get(name), mine["outcomes"].get(name)
            if not a or not b:
                continue
            if len(a) != len(b):
                raise SystemExit(f"{row['name']} / {name}: {len(a)} prompts against {len(b)}: not the same suite")
            same = sum(x == y for x, y in zip(a, b)) / len(a)
            only_a, only_b = discordant(a, b)
            p = mcnemar_exact(only_a, only_b)
            worst = min(worst, same)
            if name == "harmful" and row.get("trainable_params", 0):
                restored_p.append((label, p))
            print(
                f"| {label} | {name} | {len(a)} | {same:.1%} | {sum(a) / len(a):.1%} | {sum(b) / len(b):.1%}"
                f" | {only_a} / {only_b} | {p:.3g} |"
            )
    k = len(ref_map["selected_layers"])
    top_ref, top_other = sorted(ref_map["selected_layers"]), sorted(other_map["selected_layers"])
    ranked_ref, ranked_other = ref_map["ranked_layers"], other_map["ranked_layers"]
    overlap = {n: len(set(ranked_ref[:n]) & set(ranked_other[:n])) for n in (3, 5, 10)}
    print(f"\nlayer map top-{k}: {top_ref} against {top_other} ({'same' if top_ref == top_other else 'DIFFERENT'})")
    print("ranking overlap: " + ", ".join(f"top-{n} {v}/{n}" for n, v in overlap.items()))
    print(f"ranked order (ref):   {ranked_ref[:10]}\nranked order (other): {ranked_other[:10]}")
    print(f"\nlowest share of identical judgments in any row and set: {worst:.1%} (target >= 98%)")
    if restored_p:
        low = min(restored_p, key=lambda item: item[1])
        print(f"restoration rows, harmful refusal: lowest McNemar p {low[1]:.3g} ({low[0]}; target >= 0.05)")


if __name__ == "__main__":
    main()
