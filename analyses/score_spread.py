"""How sure is the layer map of its top 3? The score's spread over prompt resamples, per organism.

For each named analysis folder (``interp analyze --out F`` or ``interp run --out F``: it holds
``metrics.json``, the causal sweep per prompt, and ``activations/``): the analysis's own spread
(``interp.measures.layer_map.score_spread`` at the last prompt token, 1000 resamples), or computed from the
folder when the analysis predates it. Per organism: the map's top 3, each selected
block's share of resamples in which it is in the top 3, the share in which the top 3 is the map's set,
and every block in the top 3 of at least 5% of resamples with its score and 95% interval. Reads the
folders only, no model.

    interp analyze --out runs/default-analysis                  # the default pair (cached analysis)
    interp run --recipe seed-1 --out runs/seed-1                # another organism's analysis
    python analyses/score_spread.py default=runs/default-analysis seed-1=runs/seed-1 \
        --out figures/organisms/score_spread.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from interp.errors import InterpError
from interp.io.atomic import atomic_write_text
from interp.measures.capture import Activations
from interp.measures.compare import PairActivations
from interp.measures.layer_map import ScoreSpread, score_spread
from interp.measures.result import AnalysisResult
from interp.report.tables import markdown_table

K, SHOWN = 3, 0.05
SETS = [f"{role}_{kind}" for role in ("base", "ft") for kind in ("harmful", "harmless", "task")]


def load(folder: Path) -> tuple[AnalysisResult, PairActivations]:
    """An analysis folder's result and its residual-stream activations at the last prompt token."""
    result = AnalysisResult.load(folder)
    acts = {name: Activations.load(folder / "activations" / name.replace("_", "-")) for name in SETS}
    return result, PairActivations(**{name: a.tensor.numpy()[:, :, -1] for name, a in acts.items()})


def tables(spreads: dict[str, tuple[list[int], ScoreSpread]]) -> str:
    """The summary per organism, then the blocks that reach the top 3 in at least ``SHOWN`` of resamples."""
    summary, blocks = [], []
    for name, (selected, s) in spreads.items():
        shares = ", ".join(f"{layer}: {s.top_k_share[layer]:.0%}" for layer in selected)
        n = s.n_prompts
        prompts = f"{n['harmful']} / {n['harmless']} / {n['task']} / {n['causal']}"
        summary.append([name, str(selected), shares, f"{s.same_top_k:.0%}", prompts])
        for layer in sorted(range(len(s.score)), key=lambda layer: -s.top_k_share[layer]):
            if s.top_k_share[layer] >= SHOWN:
                blocks.append([name, str(layer), f"{s.top_k_share[layer]:.0%}",
                               f"{s.score[layer]:.3f} [{s.low[layer]:.3f}, {s.high[layer]:.3f}]",
                               "yes" if layer in selected else ""])  # fmt: skip
    return "\n".join([
        markdown_table(["organism", f"the map's top {K}", f"each one's share of resamples in the top {K}",
                        f"resamples whose top {K} is the map's", "prompts (harmful / harmless / task / causal)"],
                       summary),
        "",
        f"Every block in the top {K} of at least {SHOWN:.0%} of resamples:",
        "",
        markdown_table(["organism", "block", f"share in the top {K}", "score [95% interval]", "in the map"], blocks),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER: an analysis folder with activations/")
    parser.add_argument("--out", default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    if any("=" not in run for run in args.runs):
        parser.error("give NAME=FOLDER (an analysis folder)")
    spreads = {}
    for item in args.runs:
        name, folder = item.split("=", 1)
        try:
            result, acts = load(Path(folder))
        except (InterpError, OSError) as error:
            sys.exit(f"score_spread.py: {name}: {error}")
        selected = result.layer_map.selected_layers
        if len(selected) != K:
            sys.exit(f"score_spread.py: {name}: the map selects {len(selected)} blocks, not {K}")
        kept = result.spread if result.spread is not None and result.spread.k == K else None  # the analysis's own
        spreads[name] = selected, kept or score_spread(acts, result.sweep, k=K, weights=result.layer_map.score_weights)
    command = shlex.join(["python", "analyses/score_spread.py", *args.runs])
    text = "\n".join([
        f"# The layer map's top {K} under prompt resampling",
        "",
        f"`{command}`: the layer map's score recomputed on 1000 bootstrap resamples of the analysis prompts"
        " (`interp.measures.layer_map.score_spread`: harmful, harmless and task prompts and the causal sweep's"
        " prompts resampled, the base refusal direction held at its estimate, each resample's own maxima).",
        "",
        tables(spreads),
        "",
    ])  # fmt: skip
    if args.out:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
