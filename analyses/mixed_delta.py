"""The weight-space methods with a mixed alignment delta: how much each depends on a clean delta.

In the default organism the alignment vector (base minus source) is exactly the safety LoRA. Each method that
reads the unaligned checkpoint (RESTA, RESTA + DARE, Safe LoRA released and with the exact projector) runs
twice on the default pair: with the organism's source (the clean delta) and with the mixed source of
``interp.organism.controls`` (the source plus a capital-letters style LoRA of the safety stage's size and
budget, so the delta is safety minus a style). Each time its setting is chosen on dev by the protocol's rule,
then it is judged once on the test parts of the claim sets (harmful, XSTest unsafe and safe, harmless, the
task). Writes ``mixed_delta.md`` and ``mixed_delta.json`` into ``--out`` (and the analysis it needs under
``--out/run``).

    python analyses/mixed_delta.py [--out runs/mixed-delta]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from interp.core.models import load_model
from interp.default_run import prepare
from interp.evaluation.stats import wilson_interval
from interp.io.atomic import atomic_write_json, atomic_write_text
from interp.organism.controls import delta_norms, mixed_source
from interp.protocol import Protocol
from interp.protocol.bench import Bench, claim_suite, safe_set
from interp.protocol.claims import matched, rate
from interp.protocol.peers import USES_UNALIGNED, peer_rows
from interp.report.tables import markdown_table


def _pct(values) -> str:
    low, high = wilson_interval(int(sum(values)), len(values))
    return f"{100 * np.mean(values):.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mixed-delta")
    args = parser.parse_args()
    out = Path(args.out)
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    start = time.perf_counter()
    prepared = prepare(out / "run", size="full")
    recipe, pair = prepared.recipe, prepared.pair
    bench = Bench(pair, prepared.analysis, prepared.harmful, prepared.retain, chat=recipe.chat)
    source = load_model(recipe.source, dtype="float32")
    mixed = mixed_source(recipe)
    norms = delta_norms(source, load_model(pair.base.path, dtype="float32"), mixed)
    print("delta norms: " + ", ".join(f"{k} {v:.2f}" for k, v in norms.items()), flush=True)
    dev, test = claim_suite(prepared.suite, "dev"), claim_suite(prepared.suite, "test")
    safe, margin = safe_set(test), Protocol.load().margin
    base, ft = bench.judge([], test)
    cells, saved = [], {"norms": norms, "runs": {}}
    for label, unaligned in (("clean", source), ("mixed", mixed)):
        chosen, trials, rows = peer_rows(pair, unaligned, bench, dev, test, margin, methods=USES_UNALIGNED)
        saved["runs"][label] = {"chosen": [c.__dict__ for c in chosen], "trials": trials,
                                "rows": [r.to_dict() for r in rows]}  # fmt: skip
        for peer, row in zip(chosen, rows):
            cells.append([
                peer.method, label, peer.setting, _pct(row.outcomes["harmful"]), _pct(row.outcomes[safe]),
                _pct(matched(base, row, safe)), f"{100 * row.task_accuracy:.1f}",
            ])  # fmt: skip
    head = ["method", "alignment delta", "setting (chosen on dev)", "harmful refusal [95% CI]",
            "over-refusal (XSTest safe)", "harmful at the base's over-refusal", "task accuracy"]  # fmt: skip
    reference = (
        f"Base: harmful {100 * rate(base, 'harmful'):.1f}%, over-refusal {100 * rate(base, safe):.1f}%, task "
        f"{100 * base.task_accuracy:.1f}%. Fine-tuned: harmful {100 * rate(ft, 'harmful'):.1f}%, over-refusal "
        f"{100 * rate(ft, safe):.1f}%, task {100 * ft.task_accuracy:.1f}%."
    )
    text = "\n".join([
        "# Weight-space methods with a clean and a mixed alignment delta (test parts)",
        "",
        "`python analyses/mixed_delta.py` (`interp.organism.controls`). Frobenius norms over the block linear"
        f" weights: safety update {norms['safety']:.2f}, style update {norms['style']:.2f}, mixed delta"
        f" {norms['mixed delta']:.2f}.",
        "",
        reference,
        "",
        markdown_table(head, cells),
        "",
        f"Time {time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f} at the end.",
        "",
    ])  # fmt: skip
    atomic_write_text(out / "mixed_delta.md", text)
    atomic_write_json(out / "mixed_delta.json", saved)
    print(text)


if __name__ == "__main__":
    main()
