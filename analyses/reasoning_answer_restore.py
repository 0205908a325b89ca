"""Restoring the reasoning organism's final answer: alignment after a closed trace.

On the reasoning organism the base teacher makes the student refuse inside ``<think>`` and never close it,
and the reminder teacher barely moves it (``docs/results/default-organism.md``). Here every harmful training
prompt is followed, for student and teacher (the base, in the same R1 format) alike, by a closed neutral
trace (``TRACE``, then ``</think>``), and the safety loss reads only the positions from ``</think>`` on
(``RestoreConfig.harmful_prefill``, ``safety_positions``): where the final answer is decided. The trace's
own positions are left free, so nothing teaches the model to refuse inside it.

LoRA on every block (rank 8), the retain loss as in every restoration. The settings (lr, steps) are
chosen on the dev parts by the protocol file's rule, which reads the judge on each whole output (trace
and answer), not the final answer alone; the chosen setting is then judged once on the test parts, with
the trace and the final answer reported apart (``parts_table``). Writes ``report.md`` and ``report.json`` into
``--out``.

    python analyses/reasoning_answer_restore.py [--out runs/reasoning-answer]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import interp
from interp.core.chat import tokenize
from interp.core.generate import find_refusal_tokens
from interp.io.atomic import atomic_write_json, atomic_write_text
from interp.measures.layer_map import manual_layer_map
from interp.organism import OrganismRecipe, study_prompts
from interp.protocol import Protocol
from interp.protocol.bench import choose_setting, claim_suite, safe_set
from interp.report.study_tables import parts_table, results_table
from interp.training.restore import restore
from interp.training.restore_config import RestoreConfig

TRACE = "Let me consider what is being asked."
SETTINGS = [(1e-3, 24), (3e-3, 24), (1e-3, 96), (3e-3, 96)]  # (lr, steps), tried on dev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/reasoning-answer")
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    start = time.perf_counter()
    recipe = OrganismRecipe.reasoning()
    pair = interp.build_organism(recipe).load_pair(dtype="bfloat16")
    chat = recipe.chat
    harmful, retain, suite = study_prompts(recipe)
    tail = f"{TRACE}\n</think>\n\n"
    closing = len(tokenize(pair.finetuned.tokenizer, "</think>\n\n"))  # the positions read: </think> and after
    base_config = RestoreConfig(harmful_prefill=tail, safety_positions=closing)
    layer_map = manual_layer_map(pair.base, pair.finetuned, range(pair.n_layers))
    evaluation = interp.EvalConfig(max_new_tokens=32, task_max_new_tokens=48, trace_tokens=64)
    tokens = find_refusal_tokens(pair.base, harmful, progress=False)

    def judged(configs: list[RestoreConfig], part: str):
        candidates = [interp.Candidate("base", pair.base, plan="base"),
                      interp.Candidate("finetuned", pair.finetuned, plan="finetuned")]  # fmt: skip
        for config in configs:
            result = restore(pair.finetuned, layer_map, harmful, retain, config, base=pair.base, chat=chat)
            name = f"answer-aligned, lr {config.lr:g}, {config.steps} steps"
            candidates.append(interp.Candidate(name, result.merged(pair.finetuned, name=name), plan=name,
                                               trainable_params=result.stats.trainable_params))  # fmt: skip
        return interp.evaluate_models(candidates, claim_suite(suite, part), refusal_tokens=tokens,
                                      reference=pair.finetuned, config=evaluation, chat=chat)  # fmt: skip

    tried = [replace(base_config, lr=lr, steps=steps) for lr, steps in SETTINGS]
    dev = judged(tried, "dev")
    rows = {f"{c.lr:g}/{c.steps}": [row] for c, row in zip(tried, dev[2:])}
    chosen, trials = choose_setting("answer-aligned", rows, dev[0], dev[1], safe_set(suite), Protocol.load().margin,
                                    key="setting")  # fmt: skip
    config = tried[list(rows).index(chosen)]
    print(f"chosen on dev: lr {config.lr:g}, {config.steps} steps; load {os.getloadavg()[0]:.2f}", flush=True)
    test = judged([config], "test")
    out = Path(args.out)
    text = "\n".join([
        "# The reasoning organism restored on the final answer (alignment after a closed trace)",
        "",
        f"`python analyses/reasoning_answer_restore.py`; chosen on dev: lr {config.lr:g}, {config.steps} steps.",
        "Test parts. The first table judges each whole output (trace and answer); the second splits refusal"
        " into the trace and the final answer (after `</think>`) and counts the traces that closed.",
        "",
        results_table(test),
        "",
        parts_table(test),
        "",
        "Dev trials: " + "; ".join(f"{t['setting']}: harmful {t['harmful']:.1%}, over-refusal {t['safe']:.1%},"
                                   f" task {t['task']:.1%}" for t in trials) + ".",  # fmt: skip
        "",
        f"Time {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f} at the end.",
        "",
    ])  # fmt: skip
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "report.json", {"chosen": chosen, "trials": trials, "test": [r.to_dict() for r in test],
                                            "dev": [r.to_dict() for r in dev]})  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
