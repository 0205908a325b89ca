"""Where to read the refusal score on a reasoning pair: the first step or the final answer (amendment 11).

On the reasoning organism the assistant turn opens inside ``<think>``, so the first step's logits choose
the trace's first token. This script measures, on the dev parts (no claim reads them), how well each
reading of the logit refusal score does what H2a asks of it, for the base and the fine-tuned model:

* **harmful vs safe**: the AUROC of the score with harmful prompts positive and XSTest safe prompts
  negative (what the protocol's AUROC column reads; chance is 0.5);
* **judged refusal**: the AUROC of the score against the judged final-answer refusal over every answer of
  the harmful and XSTest safe sets (what a threshold on the score stands in for).

Both with bootstrap 95% intervals (prompts resampled, 500 times). The answers are the same greedy answers
either way (``interp.organism.study_evaluation``); only the position the score is read at moves
(``EvalConfig.score_on``). Writes ``--out`` (markdown).

    python analyses/answer_score_check.py [--out figures/reasoning_answer_score.md]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import interp
from interp.core.generate import find_refusal_tokens
from interp.evaluation.stats import auroc, bootstrap_interval
from interp.io.atomic import atomic_write_text
from interp.organism import OrganismRecipe, study_evaluation, study_prompts
from interp.protocol.bench import claim_suite
from interp.report.tables import markdown_table

SETS = ("harmful", "xstest")  # harmful positive, XSTest safe negative


def cell(scores: list[float], labels: list[int]) -> str:
    value = auroc(scores, labels)
    if value != value:
        return "n/a"
    low, high = bootstrap_interval(auroc, scores, labels, resamples=500)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/reasoning_answer_score.md")
    args = parser.parse_args()
    load, start = os.getloadavg()[0], time.perf_counter()
    recipe = OrganismRecipe.reasoning()
    pair = interp.build_organism(recipe).load_pair(dtype="bfloat16")
    harmful, _, suite = study_prompts(recipe)
    dev = claim_suite(suite, "dev")
    tokens = find_refusal_tokens(pair.base, harmful, progress=False)
    candidates = [interp.Candidate("base", pair.base, plan="base"),
                  interp.Candidate("finetuned", pair.finetuned, plan="finetuned")]  # fmt: skip
    cells = []
    for where in ("first", "answer"):
        config = replace(study_evaluation(recipe, interp.EvalConfig()), score_on=where)
        rows = interp.evaluate_models(candidates, dev, refusal_tokens=tokens, reference=pair.finetuned,
                                      config=config, chat=recipe.chat, progress=False)  # fmt: skip
        for row in rows:
            scores = [x for name in SETS for x in row.scores[name]]
            kinds = [int(name == "harmful") for name in SETS for _ in row.scores[name]]
            judged = [int(x) for name in SETS for x in row.outcomes[name]]
            cells.append([row.name, where, f"{sum(judged)}/{len(judged)}", cell(scores, kinds), cell(scores, judged)])
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{name} n={len(getattr(dev, name))}" for name in SETS)
    text = "\n".join(
        [
            "# The refusal score on the reasoning organism: first step or final answer (dev parts)",
            "",
            f"`python analyses/answer_score_check.py`: {sizes}; refusal tokens {tokens} (read off the base's "
            "answers). AUROC with bootstrap 95% intervals (500 resamples of the prompts); chance is 0.5. "
            "*first*: the score at the first step (the trace's first token); *answer*: at the final answer's first "
            "token after `</think>` that is not whitespace, the first step's where the trace never closed "
            "(protocol amendment 11). Judged refusal reads the final answer (amendment 9).",
            "",
            markdown_table(
                [
                    "model",
                    "score read at",
                    "judged refusals",
                    "AUROC harmful vs XSTest safe",
                    "AUROC against judged refusal",
                ],
                cells,
            ),  # fmt: skip
            "",
            f"{seconds:.0f} s on this machine (load {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end).",
            "",
        ]
    )
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
