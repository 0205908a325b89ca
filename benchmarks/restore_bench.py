"""Benchmark: the study's four restoration plans trained one after another, as at fc15b40 (``old``), each
alone with today's single-plan path (``alone``), and together in lockstep (``lockstep``).

- ``old``: ``interp/training/restore.py`` of commit fc15b40, loaded from git: every forward from layer 0,
  the teacher's and the frozen model's passes once per plan, retain batches padded as one.
- ``alone``: ``interp.training.restore.restore`` per plan (the student resumes at its lowest LoRA layer,
  the system-turn prefix runs once per step, retain batches split by length; nothing shared between plans).
- ``lockstep``: ``interp.training.restore.restore_many`` on all plans at once (the study's path).

Same pair (the default organism), layer map (``--analysis``), prompts (``interp.organism.study_prompts``),
settings (``RestoreConfig`` with ``--steps``). Prints wall time per variant with the load average, the
ratios, and the largest difference between the loss histories (each variant against ``old``).

    python benchmarks/restore_bench.py --analysis runs/default [--steps 6]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

OLD_COMMIT = "fc15b40"


def load_average() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def old_restore_module():
    """``interp/training/restore.py`` as it was at ``OLD_COMMIT``, imported inside the ``interp.training``
    package (its relative imports resolve against today's modules, which it uses unchanged)."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:interp/training/restore.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="restore-bench-")) / "restore_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("interp.training.restore_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def largest_difference(a: list[dict], b: list[dict]) -> tuple[float, float]:
    """Largest absolute and relative difference between two loss histories."""
    pairs = [(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in ("safety", "retain")]
    return max(abs(x - y) for x, y in pairs), max(abs(x - y) / max(abs(y), 1e-12) for x, y in pairs if y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analysis", default="runs/default", help="a run folder with layer_map.json")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    if not (Path(args.analysis) / "layer_map.json").exists():
        sys.exit(f"restore_bench: {args.analysis} has no layer_map.json; run `interp run` first")

    import torch

    from interp.measures.layer_map import LayerMap
    from interp.organism import OrganismRecipe, build_organism, study_prompts
    from interp.study_plans import make_plans
    from interp.training.restore import restore, restore_many
    from interp.training.restore_config import RestoreConfig

    recipe = OrganismRecipe()
    pair = build_organism(recipe, log=lambda _: None).load_pair()
    harmful, retain, _ = study_prompts(recipe)
    layer_map = LayerMap.load(Path(args.analysis) / "layer_map.json")
    plans = make_plans(layer_map)
    config = RestoreConfig(steps=args.steps)
    print(f"plans: {[(p.key, list(p.layers)) for p in plans]}; {args.steps} steps of batch {config.batch_size}")
    print(f"threads {torch.get_num_threads()}; {load_average()}")

    old = old_restore_module()
    histories, seconds = {}, {}

    def timed(name, run):
        print(f"{name}: start, {load_average()}", flush=True)
        t0 = time.perf_counter()
        histories[name] = run()
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name]:.1f}s; {load_average()}", flush=True)

    def each_alone(train, student):
        """Loss histories of every plan trained on its own by ``train`` on ``student()``."""
        options = {"base": pair.base, "progress": False}
        return [
            train(
                student(), layer_map, harmful, retain, config, layers=p.layers, alignment=p.alignment, **options
            ).stats.history
            for p in plans
        ]

    timed("old", lambda: each_alone(old.restore, lambda: replace(pair.finetuned, hf=copy.deepcopy(pair.finetuned.hf))))
    timed("alone", lambda: each_alone(restore, lambda: pair.finetuned))
    timed(
        "lockstep",
        lambda: [
            r.stats.history
            for r in restore_many(
                pair.finetuned,
                layer_map,
                harmful,
                retain,
                [p.placement for p in plans],
                config,
                base=pair.base,
                progress=False,
            )
        ],
    )
    print()
    print("| variant | seconds | old / variant | loss difference to old: absolute, relative | to alone |")
    print("|---|---|---|---|---|")
    for name in ("old", "alone", "lockstep"):
        diffs = {
            ref: [largest_difference(a, b) for a, b in zip(histories[name], histories[ref])] for ref in ("old", "alone")
        }
        (old_abs, old_rel), (alone_abs, alone_rel) = (tuple(map(max, zip(*d))) for d in diffs.values())
        print(
            f"| {name} | {seconds[name]:.1f} | {seconds['old'] / seconds[name]:.2f}x | {old_abs:.1e}, {old_rel:.1e} "
            f"| {alone_abs:.1e}, {alone_rel:.1e} |"
        )
    by_step = [
        max(
            abs(a[step][k] - b[step][k]) / abs(b[step][k])
            for a, b in zip(histories["lockstep"], histories["old"])
            for k in ("safety", "retain")
            if b[step][k]
        )
        for step in range(args.steps)
    ]
    print("lockstep vs old, largest relative difference by step: " + ", ".join(f"{d:.1e}" for d in by_step))
    losses = [abs(h[k]) for hs in histories["old"] for h in hs for k in ("safety", "retain")]
    print(f"losses range over [{min(losses):.3g}, {max(losses):.3g}]")
    print(f"({load_average()})")


if __name__ == "__main__":
    main()
