"""Benchmark: one process against two (``accelerate launch``, gloo on this CPU) for capture, evaluation and
restoration on the default organism.

Each command runs with an empty cache of its own (nothing reused), first in one process (torch's threads:
all cores), then in two (one thread each, as accelerate sets it). Prints wall-clock seconds, the ratio and
the load average before each run; run it on an idle machine.

    python benchmarks/distributed_bench.py [--limit 40] [--steps 6] [--layer-map runs/default/layer_map.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def launch(args: list[str], processes: int, cache: str) -> float:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += (["--multi_gpu"] if processes > 1 else ["--cpu"]) + ["-m", "interp", *args]
    start = time.perf_counter()
    done = subprocess.run(command, env=os.environ | {"INTERP_CACHE": cache}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=40, help="prompts per set")
    parser.add_argument("--steps", type=int, default=6, help="restoration steps")
    parser.add_argument("--layer-map", default="runs/default/layer_map.json")
    args = parser.parse_args()

    from interp.organism import OrganismRecipe, build_organism

    organism = build_organism(OrganismRecipe(), log=lambda _: None)
    base, ft = str(organism.base_path), str(organism.finetuned_path)
    pair = ["--base", base, "--finetuned", ft]
    commands = {
        "capture (fine-tuned, 4 x limit harmful prompts, every layer, last 5 positions)": lambda out: [
            "capture", "--model", ft, "--prompts", "builtin:harmful:all", "--positions", "last:5",
            "--limit", str(4 * args.limit), "--out", out,
        ],
        "evaluate (base and fine-tuned, 4 x limit prompts, greedy)": lambda out: [
            "evaluate", *pair, "--limit", str(args.limit), "--refusal-tokens", "57", "--no-cache", "--out", out,
        ],
        f"restore ({args.steps} steps, batch 16, the layer map's blocks)": lambda out: [
            "restore", *pair, "--layer-map", args.layer_map, "--steps", str(args.steps), "--batch-size", "16",
            "--no-merged", "--out", out,
        ],
    }  # fmt: skip
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    print("| stage | 1 process s | 2 processes s | 2 / 1 | load before (1, 2) |")
    print("|---|---|---|---|---|")
    for name, build in commands.items():
        seconds, loads = [], []
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                loads.append(os.getloadavg()[0])
                seconds.append(launch(build(f"{tmp}/out"), processes, f"{tmp}/cache"))
        print(
            f"| {name} | {seconds[0]:.1f} | {seconds[1]:.1f} | {seconds[1] / seconds[0]:.2f} | "
            f"{loads[0]:.2f}, {loads[1]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
