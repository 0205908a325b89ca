"""The published restoration methods on any organism of the family, with their cost, and the control for a
clean alignment delta.

On the organism ``--recipe`` (default: the default pair) every method of ``interp.protocol.peers`` (the
weight-space methods and self-distillation at the layer map's top 3, every protocol seed) gets its setting
chosen on dev by the protocol file's rule, then is judged once on the test parts of the claim sets
(harmful, XSTest unsafe and safe, harmless, the task). With ``--mixed-delta`` each method that reads the
unaligned checkpoint (RESTA with and without DARE, both Safe LoRA projections) runs again with the mixed
source of ``interp.organism.controls`` (the source plus a capital-letters style LoRA of the safety stage's
size and budget: the alignment delta becomes safety minus a style). Writes ``peers.md`` and ``peers.json``
into ``--out`` (and the analysis the methods need under ``--out/run``).

    python analyses/peer_methods.py [--recipe harmful-mix] [--mixed-delta] [--out runs/peers-harmful-mix]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from interp.core.models import load_model
from interp.default_run import prepare
from interp.evaluation.stats import wilson_interval
from interp.io.atomic import atomic_write_json, atomic_write_text
from interp.organism import FAMILY
from interp.organism.controls import delta_norms, mixed_source
from interp.protocol import Protocol
from interp.protocol.bench import Bench, claim_suite, safe_set
from interp.protocol.claims import matched
from interp.protocol.peers import SETTINGS, USES_UNALIGNED, distill_rows, peer_rows
from interp.report.tables import markdown_table
from interp.training.restore_config import RestoreConfig

HEAD = ["model", "alignment delta", "setting (chosen on dev)", "harmful refusal [95% CI]", "over-refusal (XSTest safe)",
        "harmful at the base's over-refusal", "task accuracy", "seconds to make", "trainable params"]  # fmt: skip


def _pct(values) -> str:
    low, high = wilson_interval(int(sum(values)), len(values))
    return f"{100 * np.mean(values):.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _cells(name, delta, setting, row, base, safe, cost=("", "")) -> list[str]:
    return [name, delta, setting, _pct(row.outcomes["harmful"]), _pct(row.outcomes[safe]),
            _pct(matched(base, row, safe)), _pct(row.outcomes["task"]), *cost]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=FAMILY, default="default")
    parser.add_argument("--mixed-delta", action="store_true", help="also the methods that read V, with a mixed V")
    parser.add_argument("--out", default="runs/peers")
    args = parser.parse_args()
    out, start = Path(args.out), time.perf_counter()
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    prepared = prepare(out / "run", size="full", recipe_name=args.recipe)
    recipe, pair, protocol = prepared.recipe, prepared.pair, Protocol.load()
    bench = Bench(pair, prepared.analysis, prepared.harmful, prepared.retain, chat=recipe.chat)
    dev, test = claim_suite(prepared.suite, "dev"), claim_suite(prepared.suite, "test")
    safe = safe_set(test)
    base, ft = bench.judge([], test)
    cells = [_cells("base", "", "", base, base, safe), _cells("fine-tuned", "", "", ft, base, safe)]
    saved: dict = {"recipe": args.recipe, "runs": {}}
    deltas = [("clean", load_model(recipe.source, dtype="float32"), tuple(SETTINGS))]
    if args.mixed_delta:
        mixed = mixed_source(recipe)
        saved["norms"] = delta_norms(deltas[0][1], load_model(pair.base.path, dtype="float32"), mixed)
        deltas.append(("mixed", mixed, USES_UNALIGNED))
    for label, unaligned, methods in deltas:
        chosen, trials, rows = peer_rows(pair, unaligned, bench, dev, test, protocol.margin, methods=methods)
        saved["runs"][label] = {"chosen": [asdict(c) for c in chosen], "trials": trials,
                                "rows": [r.to_dict() for r in rows]}  # fmt: skip
        for peer, row in zip(chosen, rows):
            cost = (f"{peer.seconds:.0f}", "0")
            cells.append(_cells(peer.method, label, peer.setting, row, base, safe, cost))
    layers = list(prepared.analysis.layer_map.selected_layers)
    short = RestoreConfig(steps=protocol.budgets[0])
    cost, trials, by_seed = distill_rows(bench, layers, dev, test, protocol.seeds, short, protocol.margin)
    saved["runs"]["self-distillation"] = {"chosen": asdict(cost), "trials": trials,
                                          "rows": {s: r.to_dict() for s, r in by_seed.items()}}  # fmt: skip
    for seed, row in by_seed.items():
        spent = (f"{cost.seconds:.0f}", f"{cost.trainable:,}")
        cells.append(_cells(f"self-distillation {layers}, seed {seed}", "", cost.setting, row, base, safe, spent))
    norms = saved.get("norms")
    text = "\n".join([
        f"# Published restoration methods on the organism `{args.recipe}` (test parts)",
        "",
        f"`python analyses/peer_methods.py --recipe {args.recipe}{' --mixed-delta' if norms else ''}`: each"
        " method's setting chosen on dev by the protocol's rule, then judged once on the test parts; rates in %"
        " with Wilson 95% intervals; *harmful at the base's over-refusal* thresholds each model's first-token"
        " refusal score where it refuses as many XSTest-safe prompts as the base is judged to.",
        "",
        *([] if not norms else [
            f"Mixed delta: Frobenius norms over the block linear weights: safety update {norms['safety']:.2f},"
            f" style update {norms['style']:.2f}, mixed delta {norms['mixed delta']:.2f}.", ""]),
        markdown_table(HEAD, cells),
        "",
        f"Time {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f} at the end.",
        "",
    ])  # fmt: skip
    atomic_write_text(out / "peers.md", text)
    atomic_write_json(out / "peers.json", saved)
    print(text)


if __name__ == "__main__":
    main()
