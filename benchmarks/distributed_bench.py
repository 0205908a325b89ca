"""Benchmark: one process against two (``accelerate launch``, gloo on this CPU) for capture, evaluation and
restoration on the default organism.

Each command runs with an empty cache of its own (nothing reused), first in one process (torch's threads:
all cores), then in two (one thread each, as accelerate sets it); the restoration once more with FSDP
(``accelerate launch --use_fsdp --fsdp_version 2``: the students' blocks sharded over the two); then four
plans trained in lockstep (``restore_many``, as the study trains them), without and with FSDP. Prints
wall-clock seconds, the ratio, the peak resident memory of the largest process (ru_maxrss over the
launch and every process it reaped) and the load average before each run; run it on an idle machine.
Every run gets glibc's ``MALLOC_MMAP_THRESHOLD_=1048576``: allocations over 1 MiB are mapped and returned
on free, so the resident memory follows the live tensors (without it, glibc's heap keeps what FSDP's
per-block gathers free, and the FSDP runs' peak grew by about 1.5 GiB here).

    python benchmarks/distributed_bench.py [--limit 40] [--steps 6] [--layer-map runs/default/layer_map.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FSDP = ["--use_fsdp", "--fsdp_version", "2"]
LOCKSTEP = """
import sys
from interp.core.models import load_model
from interp.core.prompts import harmful_prompts, harmless_prompts
from interp.measures.layer_map import LayerMap
from interp.training.restore import restore_many
from interp.training.restore_config import Placement, RestoreConfig

base, finetuned, layer_map = load_model(sys.argv[1]), load_model(sys.argv[2]), LayerMap.load(sys.argv[3])
n, top = layer_map.n_layers, tuple(layer_map.selected_layers)
plans = [(top, top), (tuple(range(n)), (n - 1,)), ((12, 24, 27), (12, 24, 27)), ((4, 16, 17), (4, 16, 17))]
config = RestoreConfig(steps=int(sys.argv[4]), batch_size=16)
harmful, retain = harmful_prompts("train"), harmless_prompts("train")
placements = [Placement(layers, tuple(sorted(set(align) | {n - 1}))) for layers, align in plans]
restore_many(finetuned, layer_map, harmful, retain, placements, config, base=base, progress=False)
"""


def launch(args: list[str], processes: int, cache: str, kind: list[str] = ("--multi_gpu",)) -> tuple[float, float]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += (list(kind) if processes > 1 else ["--cpu"]) + args
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        env = os.environ | {"INTERP_CACHE": cache, "MALLOC_MMAP_THRESHOLD_": str(2**20)}  # module docstring
        child = subprocess.Popen(command, env=env, stdout=log, stderr=log, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # the launch and every process it reaped
        if status:
            log.seek(0)
            raise SystemExit(log.read()[-2000:])
    return time.perf_counter() - start, usage.ru_maxrss / 2**20  # KiB -> GiB: the largest single process


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
    restore = [
        "restore", *pair, "--layer-map", args.layer_map, "--steps", str(args.steps), "--batch-size", "16",
        "--no-merged",
    ]  # fmt: skip
    script = Path(tempfile.mkdtemp()) / "lockstep.py"
    script.write_text(LOCKSTEP)
    lockstep = [str(script), base, ft, args.layer_map, str(args.steps)]
    commands = {
        "capture (fine-tuned, 4 x limit harmful prompts, every layer, last 5 positions)": lambda out: [
            "capture", "--model", ft, "--prompts", "builtin:harmful:all", "--positions", "last:5",
            "--limit", str(4 * args.limit), "--out", out,
        ],
        "evaluate (base and fine-tuned, 4 x limit prompts, greedy)": lambda out: [
            "evaluate", *pair, "--limit", str(args.limit), "--refusal-tokens", "57", "--no-cache", "--out", out,
        ],
        f"restore ({args.steps} steps, batch 16, the layer map's blocks)": lambda out: [*restore, "--out", out],
        f"restore, FSDP over the 2 processes ({args.steps} steps, batch 16)": lambda out: [*restore, "--out", out],
        f"restore_many: 4 plans in lockstep ({args.steps} steps, batch 16)": lambda out: lockstep,
        f"restore_many: 4 plans in lockstep, FSDP ({args.steps} steps, batch 16)": lambda out: lockstep,
    }  # fmt: skip
    print(f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    print("| stage | 1 process s | 2 processes s | 2 / 1 | largest process GiB (1, 2) | load before (1, 2) |")
    print("|---|---|---|---|---|---|")
    for name, build in commands.items():
        seconds, memory, loads = [], [], []
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                loads.append(os.getloadavg()[0])
                kind = FSDP if "FSDP" in name else ["--multi_gpu"]
                target = build(f"{tmp}/out")
                target = target if target[0].endswith(".py") else ["-m", "interp", *target]
                took, rss = launch(target, processes, f"{tmp}/cache", kind)
                seconds.append(took)
                memory.append(rss)
        print(
            f"| {name} | {seconds[0]:.1f} | {seconds[1]:.1f} | {seconds[1] / seconds[0]:.2f} | "
            f"{memory[0]:.2f}, {memory[1]:.2f} | {loads[0]:.2f}, {loads[1]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
