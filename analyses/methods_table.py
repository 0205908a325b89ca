"""Every restoration method on the test parts beside what it costs to make: a protocol run's plans and
published methods (``interp protocol --released --peers``) joined with ``benchmarks/method_cost.py``'s
measures (``interp.protocol.report.methods_table``).

    python analyses/methods_table.py --protocol figures --cost figures/peers/cost.json [--out figures/methods.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from interp.io.atomic import atomic_write_text
from interp.protocol.report import ProtocolResult, methods_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="figures", help="a folder with a protocol run's protocol.json")
    parser.add_argument("--cost", default="figures/peers/cost.json", help="benchmarks/method_cost.py's measures")
    parser.add_argument("--out", default="figures/methods.md")
    args = parser.parse_args()
    if not Path(args.cost).exists():
        sys.exit(f"methods_table: {args.cost} does not exist; run benchmarks/method_cost.py --out first")
    result = ProtocolResult.load(args.protocol)
    cost = json.loads(Path(args.cost).read_text())
    seeds = ", ".join(str(s) for s in sorted(result.rows))
    text = "\n".join([
        "# Every method on the test parts, and what it costs to make",
        "",
        f"`python analyses/methods_table.py --protocol {args.protocol} --cost {args.cost}`. Rates in % (judged"
        f" refusal; task accuracy by the judge's reference check); trained plans are the mean over seeds {seeds}"
        " with a 95% interval from a bootstrap over each set's prompts; the published methods are made once."
        " *harmful at the base's over-refusal* thresholds each model's first-token refusal score where it"
        " refuses as many XSTest-safe prompts as the base does. Cost: " + cost["note"],
        "",
        methods_table(result, cost["methods"]),
        "",
    ])  # fmt: skip
    atomic_write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
