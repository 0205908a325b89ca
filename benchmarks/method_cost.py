"""Benchmark: what each restoration method costs to make on the default pair, each in a fresh process.

Every method runs alone in a new Python process that first loads the pair (the aligned base and the
fine-tuned model, in the study's dtype) and the training prompts; then, measured, it makes the restored
model from them: it loads whatever else it needs (the unaligned source, float32 copies for the weight
arithmetic), generates (self-distillation's answers), calibrates (Antidote) and trains (LoRA). Per method:

- **seconds** to make the model (wall time, on this machine, with the load average printed beside it);
- **trainable parameters** (0 for weight arithmetic);
- **peak memory added**: the process's peak resident memory above what it held with the pair loaded
  (``interp.io.stopwatch.PeakMemory``, the kernel's high-water mark);
- what the method **needs** (``interp.protocol.peers.NEEDS``).

The settings are a protocol run's (``--protocol``, its ``protocol.json``): the weight-space methods at
their dev-chosen settings, SafeReAct's LoRA at the ranked layers and on every layer at their chosen lrs,
self-distillation at the ranked layers at its chosen lr. Nothing is read from or written to the cache. The
released SafeReAct recipe (400 steps on every layer) joins with ``--released``.

    python benchmarks/method_cost.py --protocol runs/protocol-safelora [--out figures/peers/cost.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HEAD = ["method", "setting", "seconds to make", "trainable params", "peak memory added (MiB)", "needs"]


def load_average() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def plan_methods(protocol: dict, layers: list[int], released: bool) -> list[dict]:
    """The methods to measure, with their settings, from a saved protocol result."""
    lrs = protocol["lrs"]
    methods = [
        {"method": "SafeReAct LoRA, ranked layers", "kind": "restore", "layers": layers, "lr": lrs["ranked"]},
        {"method": "SafeReAct LoRA, every layer", "kind": "restore", "layers": None, "lr": lrs["all_layers"]},
    ]
    if released:
        methods.append({"method": "released SafeReAct recipe", "kind": "released", "layers": None, "lr": None})
    for peer in protocol["peers"]:
        if peer["method"] == "Self-distillation":
            lr = float(peer["setting"].removeprefix("lr "))
            methods.append({"method": "Self-distillation", "kind": "distill", "layers": layers, "lr": lr})
        else:
            methods.append({"method": peer["method"], "kind": "weights", "setting": peer["setting"]})
    return methods


def measure(spec: dict) -> dict:
    """Make ``spec``'s model in this process (a fresh one) and return its cost."""
    from interp.core.models import load_model
    from interp.io.stopwatch import PeakMemory
    from interp.measures.layer_map import LayerMap
    from interp.organism import OrganismRecipe, build_organism, study_prompts
    from interp.protocol.peers import NEEDS, USES_UNALIGNED, float32_copy, make_peer
    from interp.training.restore import restore
    from interp.training.restore_config import PRESETS, RestoreConfig
    from interp.training.self_distill import self_distill

    recipe = OrganismRecipe()
    pair = build_organism(recipe, progress=False, log=lambda _: None).load_pair(dtype="auto")
    harmful, retain, _ = study_prompts(recipe)
    config = replace(RestoreConfig(), lr=spec.get("lr") or RestoreConfig().lr, seed=0)
    method, kind = spec["method"], spec["kind"]
    layer_map = LayerMap.load(spec["layer_map"]) if kind in ("restore", "released") else None
    trainable, needs = 0, NEEDS.get(method, "aligned and fine-tuned models, harmful and retain prompts")
    if kind == "distill":  # it measures itself, from the same start (the pair loaded)
        made = self_distill(pair, harmful, retain, spec["layers"], config, lr=spec["lr"], chat=recipe.chat,
                            cache=False)  # fmt: skip
        return {"seconds": made.seconds, "trainable": made.trainable_params, "peak_mib": made.peak_mib, "needs": needs}
    start = time.perf_counter()
    with PeakMemory() as peak:
        if kind == "weights":
            setting = spec["setting"]
            setting = float(setting) if setting.replace(".", "", 1).isdigit() else setting
            un = load_model(recipe.source, dtype="float32") if method in USES_UNALIGNED else None
            ft, al = float32_copy(pair.finetuned), float32_copy(pair.base)  # as the protocol makes them
            model = make_peer(method, setting, ft, al, un, harmful, recipe.chat)
        else:
            if kind == "released":
                config = replace(PRESETS["safereact"].config, seed=0)
            result = restore(pair.finetuned, layer_map, harmful, retain, config, base=pair.base,
                             layers=spec["layers"] if spec["layers"] is not None else range(pair.n_layers),
                             chat=recipe.chat, progress=False)  # fmt: skip
            trainable, model = result.stats.trainable_params, result.merged(pair.finetuned)
    seconds = time.perf_counter() - start
    del model
    if kind == "weights":
        trainable = 0
    else:
        needs = "aligned and fine-tuned models, harmful and retain prompts"
    return {"seconds": seconds, "trainable": trainable, "peak_mib": peak.mib, "needs": needs}


def setting_of(spec: dict) -> str:
    if spec["kind"] == "weights":
        return spec["setting"]
    if spec["kind"] == "released":
        return "r16, lr 2e-5, 400 steps, every layer"
    where = "every layer" if spec["layers"] is None else f"layers {spec['layers']}"
    return f"{where}, lr {spec['lr']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="figures", help="a folder with a protocol run's protocol.json")
    parser.add_argument("--layer-map", default="figures/layer_map.json", help="the pair's layer map")
    parser.add_argument("--released", action="store_true", help="also the released recipe (about 40 min)")
    parser.add_argument("--out", help="also write the table here (markdown) and the measures beside it (.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: one method's spec as JSON
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(json.loads(args.one))), flush=True)
        return
    path = Path(args.protocol) / "protocol.json"
    if not path.exists() or not Path(args.layer_map).exists():
        sys.exit(f"method_cost: need {path} and {args.layer_map} (run `interp protocol` and `interp run` first)")
    protocol = json.loads(path.read_text())
    layer_map = json.loads(Path(args.layer_map).read_text())
    layers = (protocol.get("ranking") or {}).get("selected") or layer_map["selected_layers"]
    methods = plan_methods(protocol, sorted(layers), args.released)

    import torch

    from interp.io.atomic import atomic_write_json, atomic_write_text
    from interp.report.tables import markdown_table

    print(f"{len(methods)} methods from {path}, each in a fresh process; threads {torch.get_num_threads()}")
    rows, measured = [], {}
    for spec in methods:
        spec = spec | {"layer_map": args.layer_map}
        before = load_average()
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"method_cost: {spec['method']} failed:\n{done.stderr[-3000:]}")
        cost = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        print(f"{spec['method']}: {cost['seconds']:.1f}s, {cost['trainable']:,} trainable, "
              f"{cost['peak_mib']:,.0f} MiB added; {before} -> {load_average()}", flush=True)  # fmt: skip
        measured[spec["method"]] = cost | {"setting": setting_of(spec)}
        rows.append([spec["method"], setting_of(spec), f"{cost['seconds']:.1f}", f"{cost['trainable']:,}",
                     f"{cost['peak_mib']:,.0f}", cost["needs"]])  # fmt: skip
    table = markdown_table(HEAD, rows)
    print(table)
    if args.out:
        note = (f"Made by `python benchmarks/method_cost.py --protocol {args.protocol}`: each method in a fresh "
                f"process on {torch.get_num_threads()} threads, measured from the pair loaded; "
                f"{load_average()} at the end.\n\n")  # fmt: skip
        atomic_write_text(args.out, "# What each method costs to make (default pair)\n\n" + note + table + "\n")
        atomic_write_json(Path(args.out).with_suffix(".json"), {"note": note.strip(), "methods": measured})


if __name__ == "__main__":
    main()
