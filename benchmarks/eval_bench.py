"""Benchmark: the evaluation engine as it was at 49f7481 (``old``) against today's (``new``), same prompts.

Models: the default organism's fine-tuned model and its ranked restoration (the adapter from the cache,
trained if missing, with the layer map of ``--analysis``). Prompts: the study's default suite
(``interp.organism.study_prompts``: harmful, XSTest unsafe, harmless, XSTest safe, arithmetic), every set
cut to its first ``--per-set`` prompts. Token budgets as in the study (32, task 48).

- ``old`` (reimplemented here from 49f7481's ``generate``, ``refusal_scores`` and ``kl_to_reference``):
  each set on its own, ``hf.generate`` in batches of 64 sorted by token length, every row decoded until
  its batch ends; the fine-tuned model with a TransformerLens bridge booted on it (as the old pipeline
  ran it after the analysis: eager attention, bridge modules), the restored model plain; the refusal score
  from a separate prefill (batch 16); the KL from a reference and a candidate forward per candidate
  (batch 16, full-vocabulary logits at every position), the reference's own row included, on reference
  answers generated separately.
- ``new``: ``interp.evaluation.table.evaluate_models`` on both models at once, with an empty cache (a
  first run: nothing reused from earlier runs, only within this call).

Prints wall times with the load average, the ratio per judged answer, the number of judgments that differ
(refusal for judged sets, correctness for the task set), the number of answer texts that differ (new
answers stopped at a refusal are compared as prefixes), and KL old vs new.

    python benchmarks/eval_bench.py --analysis runs/default [--per-set 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def load_average() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- the old engine (49f7481)
@torch.no_grad()
def old_generate(model, prompts, max_new_tokens, batch_size=64):
    from interp.core.chat import ChatFormat, batches

    tok = model.tokenizer
    seqs = ChatFormat().encode(tok, prompts.instructions)
    answers = [""] * len(seqs)
    for batch in batches(seqs, batch_size, tok.pad_token_id):
        out = model.hf.generate(
            input_ids=batch.ids,
            attention_mask=batch.mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        for row, i in enumerate(batch.index):
            answers[i] = tok.decode(out[row, batch.ids.shape[1] :], skip_special_tokens=True).strip()
    return answers


@torch.no_grad()
def old_kl(candidate_hf, reference, prompts, continuations, batch_size=16):
    from interp.core.chat import ChatFormat, batches, tokenize

    tok = reference.tokenizer
    prompt_ids = ChatFormat().encode(tok, prompts.instructions)
    cont_ids = [tokenize(tok, c) for c in continuations]
    seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
    total, count = 0.0, 0
    for batch in batches(seqs, batch_size, tok.pad_token_id):
        width = batch.ids.shape[1]
        scored = torch.zeros_like(batch.mask, dtype=torch.bool)
        for row, i in enumerate(batch.index):
            scored[row, width - len(cont_ids[i]) - 1 : width - 1] = True
        inputs = batch.to("cpu")
        ref = torch.log_softmax(reference.hf(**inputs).logits.float(), -1)[scored]
        cand = torch.log_softmax(candidate_hf(**inputs).logits.float(), -1)[scored]
        total += (ref.exp() * (ref - cand)).sum().item()
        count += int(scored.sum())
    return total / max(count, 1)


def old_evaluate(model, suite, tokens, reference, reference_answers):
    """Answers per set, refusal scores and the KL, as the old table computed them for one row."""
    from interp.core.generate import refusal_scores

    answers = {
        name: old_generate(model, prompts, 48 if name == "task" else 32) for name, prompts in suite.sets().items()
    }
    scores = refusal_scores(model, suite.harmful, tokens, batch_size=16)
    start = time.perf_counter()
    kl = old_kl(model.hf, reference, suite.harmless, reference_answers)  # reference: bridged, as it was
    return answers, scores, kl, time.perf_counter() - start


# ----------------------------------------------------------------------------- comparison
def judgments(suite, answers: dict) -> dict[str, list[int]]:
    from interp.core.judge import Behaviour

    out = {}
    for name, prompts in suite.sets().items():
        judged = Behaviour(prompts, answers[name])
        out[name] = [int(x) for x in (judged.correct if name == "task" else judged.refusals)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analysis", required=True, help="a run folder with layer_map.json (interp run)")
    parser.add_argument("--per-set", type=int, default=100, help="prompts per set (default 100)")
    args = parser.parse_args()
    if not (Path(args.analysis) / "layer_map.json").exists():
        sys.exit(f"eval_bench: {args.analysis} has no layer_map.json; run `interp run` first")

    from interp.core.bridge import boot_bridge
    from interp.core.generate import Request, generate_many
    from interp.core.models import load_model
    from interp.evaluation.kl import kl_to_reference
    from interp.evaluation.suite import Candidate, EvalConfig
    from interp.evaluation.table import _requests, evaluate_models
    from interp.measures.result import AnalysisResult
    from interp.organism import OrganismRecipe, build_organism, study_prompts
    from interp.study_plans import make_plans
    from interp.study_training import train_plans
    from interp.training.restore_config import RestoreConfig

    recipe = OrganismRecipe()
    organism = build_organism(recipe, log=lambda _: None)
    pair = organism.load_pair()
    harmful, retain, suite = study_prompts(recipe)
    suite = suite.head(args.per_set)
    analysis = AnalysisResult.load(args.analysis)
    plan = make_plans(analysis.layer_map, ())[0]
    (restored,) = train_plans([plan], pair, analysis.layer_map, harmful, retain, RestoreConfig(), progress=False)
    restored = restored.model
    tokens = analysis.refusal_tokens
    n_answers = sum(suite.sizes().values())
    print(f"suite: {suite.sizes()} ({n_answers} answers per model); refusal tokens {tokens}")
    print(f"models: {pair.finetuned.name}, {restored.name} (layers {list(plan.layers)}); {load_average()}")

    os.environ["INTERP_CACHE"] = tempfile.mkdtemp(prefix="eval-bench-")  # a first run: nothing cached
    torch.manual_seed(0)

    # old: the fine-tuned model runs through a booted bridge, as after the old analysis
    bridged = load_model(pair.finetuned.path)
    boot_bridge(bridged.hf, bridged.tokenizer, bridged.path)
    start = time.perf_counter()
    reference_answers = old_generate(bridged, suite.harmless, 32)
    old_seconds = {"reference answers": time.perf_counter() - start}
    old = {}
    old_kl_seconds = 0.0
    for name, model in (("finetuned", bridged), ("restored", restored)):
        start = time.perf_counter()
        old[name] = old_evaluate(model, suite, tokens, bridged, reference_answers)
        old_seconds[name] = time.perf_counter() - start
        old_kl_seconds += old[name][3]
        print(f"old {name}: {old_seconds[name]:.1f}s (KL {old[name][3]:.1f}s); {load_average()}", flush=True)
    old_total = sum(old_seconds.values())

    # new: both rows in one call, empty cache
    candidates = [Candidate("finetuned", pair.finetuned, plan="finetuned"), Candidate("restored", restored)]
    start = time.perf_counter()
    rows = evaluate_models(
        candidates, suite, refusal_tokens=tokens, reference=pair.finetuned, config=EvalConfig(), progress=False
    )
    new_total = time.perf_counter() - start
    print(f"new (both rows): {new_total:.1f}s; {load_average()}", flush=True)
    start = time.perf_counter()
    new_kl = kl_to_reference(candidates, pair.finetuned, suite.harmless, reference_answers)
    new_kl_seconds = time.perf_counter() - start
    print(f"new KL alone (both rows): {new_kl_seconds:.1f}s; {load_average()}", flush=True)

    requests = _requests(suite, EvalConfig(), tokens)
    print()
    print("| row | judgments that differ | answer texts that differ | stopped at a refusal | refusal score old / new |")
    print("|---|---|---|---|---|")
    for (name, model), row in zip((("finetuned", pair.finetuned), ("restored", restored)), rows):
        new_answers = dict(
            zip(requests, (a.answers for a in generate_many(model, list(requests.values()), progress=False)))
        )
        full = {
            name_: Request(req.prompts, req.max_new_tokens)
            for name_, req in requests.items()  # complete answers, to compare texts
        }
        complete = dict(zip(full, (a.answers for a in generate_many(model, list(full.values()), progress=False))))
        old_answers, old_scores, _, _ = old[name]
        old_j, new_j = judgments(suite, old_answers), row.outcomes
        differ = sum(a != b for key in old_j for a, b in zip(old_j[key], new_j[key]))
        texts = sum(a != b for key in old_answers for a, b in zip(old_answers[key], complete[key]))
        stopped = sum(a != b for key in new_answers for a, b in zip(new_answers[key], complete[key]))
        print(
            f"| {name} | {differ} of {n_answers} | {texts} of {n_answers} | {stopped} | "
            f"{float(old_scores.mean()):+.4f} / {row.refusal_score:+.4f} |"
        )
    print()
    old_kls = [old["finetuned"][2], old["restored"][2]]
    print(f"KL old: {old_kls}; new: {new_kl}; table: {[r.kl for r in rows]}")
    print(f"max |KL old - new|: {max(abs(a - b) for a, b in zip(old_kls, new_kl)):.2e}")
    print()
    print("| | old s | new s | ratio |")
    print("|---|---|---|---|")
    print(f"| evaluation of 2 rows | {old_total:.1f} | {new_total:.1f} | {old_total / new_total:.2f}x |")
    print(
        f"| per judged answer (ms) | {1000 * old_total / (2 * n_answers):.1f} | "
        f"{1000 * new_total / (2 * n_answers):.1f} | {old_total / new_total:.2f}x |"
    )
    print(
        f"| KL column, 2 rows | {old_kl_seconds:.1f} | {new_kl_seconds:.1f} | {old_kl_seconds / new_kl_seconds:.2f}x |"
    )
    print(f"\n{load_average()}")


if __name__ == "__main__":
    main()
