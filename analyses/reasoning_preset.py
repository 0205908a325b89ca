"""The released SafeReAct recipe (``interp restore --preset safereact``) on the reasoning organism, for a
given number of steps, evaluated with the R1 format beside the base and the fine-tuned model.

LoRA r16 on every module of every layer, the reminder teacher (the fine-tuned model, adapters off, the
released reminder in the prompt), alignment at every 5th block and the last, retain on every block,
weights 10 (1 - t/1.5T) and 10 t/1.5T, lr 2e-5, batch 16 (``interp.training.restore_config.PRESETS``); only the
number of steps is changed. Training uses the organism's own restoration prompts under the R1 format
(``study_prompts``); the evaluation is the quick look's seeded sample of the held-out suite, with a trace
budget of 64 tokens and 32 after ``</think>``. Writes ``report.md`` (the evaluation table, the trace and
final answer table, paired tests against base and fine-tuned) and ``restore_stats.json`` into ``--out``.

    python analyses/reasoning_preset.py [--steps 100] [--out runs/reasoning-preset]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import interp
from interp.core.generate import find_refusal_tokens
from interp.default_run import LOOK_SIZES
from interp.io.atomic import atomic_write_json, atomic_write_text
from interp.measures.layer_map import manual_layer_map
from interp.report.study_tables import study_report
from interp.training.restore import restore
from interp.training.restore_config import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="runs/reasoning-preset")
    args = parser.parse_args()

    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    recipe = interp.OrganismRecipe.reasoning()
    pair = interp.build_organism(recipe).load_pair()
    chat = recipe.chat
    harmful, retain, suite = interp.study_prompts(recipe)
    suite = suite.sample(LOOK_SIZES, seed=recipe.evaluation.seed)

    preset = PRESETS["safereact"]
    config = replace(preset.config, steps=args.steps)
    layer_map = manual_layer_map(pair.base, pair.finetuned, range(pair.n_layers))
    layers, alignment = preset.placement(layer_map)
    start = time.perf_counter()
    result = restore(pair.finetuned, layer_map, harmful, retain, config, layers=layers, alignment=alignment, chat=chat)
    train_seconds = time.perf_counter() - start
    print(f"restore: {train_seconds:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    stats = result.stats
    restored = result.merged(pair.finetuned, name=f"safereact preset ({args.steps} steps)")

    candidates = [
        interp.Candidate("base", pair.base, plan="base"),
        interp.Candidate("finetuned", pair.finetuned, plan="finetuned"),
        interp.Candidate(restored.name, restored, trainable_params=stats.trainable_params, train_seconds=train_seconds),
    ]
    evaluation = interp.EvalConfig(max_new_tokens=32, task_max_new_tokens=48, trace_tokens=64)
    tokens = find_refusal_tokens(pair.base, harmful, progress=False)
    rows = interp.evaluate_models(
        candidates, suite, refusal_tokens=tokens, reference=pair.finetuned, config=evaluation, chat=chat
    )
    paired = interp.paired_tests(rows, against=("base", "finetuned"))
    out = Path(args.out)
    atomic_write_text(out / "report.md", study_report(rows, [], paired, {"restore": train_seconds}))
    atomic_write_json(out / "restore_stats.json", stats.to_dict())
    atomic_write_json(out / "report.json", {"models": [row.to_dict() for row in rows]})
    print(f"{out / 'report.md'}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
