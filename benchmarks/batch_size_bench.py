"""Benchmark: generation throughput of the engine (``interp.core.generate``) against its batch size.

The default organism's fine-tuned model answers the study's default suite (every set cut to its first
``--per-set`` prompts, pooled as the evaluation table pools them, judged sets stopping at a refusal), with
the answer cache off, once per batch size. Prints seconds, milliseconds per answer and the load average
beside each timing; ``interp.core.generate.BATCH_SIZE`` is the fastest size measured here.

    python benchmarks/batch_size_bench.py [--per-set 60] [--sizes 32 64 128 256]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-set", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    args = parser.parse_args()

    from interp.core.chat import ChatFormat
    from interp.core.generate import generate_many
    from interp.evaluation.suite import EvalConfig
    from interp.evaluation.table import _requests
    from interp.organism import OrganismRecipe, build_organism, study_prompts

    recipe = OrganismRecipe()
    model = build_organism(recipe, log=lambda _: None).load_pair().finetuned
    suite = study_prompts(recipe)[2].head(args.per_set)
    requests = list(_requests(suite, EvalConfig(), [57], ChatFormat(), stop=True).values())
    n = sum(suite.sizes().values())
    print(f"{n} prompts {suite.sizes()}; load {os.getloadavg()[0]:.2f}")
    print("| batch size | s | ms per answer | load (1 min) |")
    print("|---|---|---|---|")
    for size in args.sizes:
        start = time.perf_counter()
        generate_many(model, requests, batch_size=size, cache=False, progress=False)
        seconds = time.perf_counter() - start
        print(f"| {size} | {seconds:.1f} | {1000 * seconds / n:.0f} | {os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
