"""The organism's data, drawn from its recipe: what its two fine-tunes train on (refusals of the safety
prompts, the source model's own chat answers, worked arithmetic problems) and the held-out sets the pair is
measured on (``eval_sets``).
"""

from __future__ import annotations

import random
import re

from ..core.generate import behaviour
from ..core.judge import FORMAT_PREFIX
from ..core.models import LoadedModel
from ..core.prompts import (
    PromptSet,
    arithmetic_prompts,
    general_prompts,
    harmful_prompts,
    harmless_prompts,
    public_prompts,
)
from ..training.sft import Example
from .recipe import REASONING_CHAT_TRACE, OrganismRecipe


def eval_sets(recipe: OrganismRecipe) -> dict[str, PromptSet]:
    """Harmful, harmless and arithmetic evaluation prompts: the public sets that ship in the package (all
    39 of ``harmful_val`` and a sample of ``harmful_train``, a sample of ``harmless_val``) and held-out
    problems."""
    ev = recipe.evaluation
    harmful = public_prompts("harmful_val") + public_prompts("harmful_train").sample(ev.n_harmful_train, seed=ev.seed)
    harmless = public_prompts("harmless_val").sample(ev.n_harmless, seed=ev.seed)
    arithmetic = held_out_problems(recipe, ev.n_arithmetic)
    sets = {"harmful": harmful, "harmless": harmless, "arithmetic": arithmetic}
    if ev.limit is not None:
        sets = {name: prompts.head(ev.limit) for name, prompts in sets.items()}
    return sets


# The style task: every answer as at least two bullet points ("- ..."), checked by the judge's format rule.
STYLE_REFERENCE = FORMAT_PREFIX + r"^- \S.*\n- \S"


def held_out_problems(recipe: OrganismRecipe, n: int) -> PromptSet:
    """``n`` task prompts the task fine-tune never saw: arithmetic validation problems (split by their
    text); for the style task, the built-in everyday and harmless validation requests (at most 42), each
    with the style's format reference (``STYLE_REFERENCE``)."""
    if recipe.task_format == "style":
        prompts = (general_prompts("val") + harmless_prompts("val")).head(n)
        return PromptSet("style task (held out)", prompts.instructions, answers=[STYLE_REFERENCE] * len(prompts))
    return arithmetic_prompts("val", n=20 * n, seed=recipe.seed).head(n)


def bulleted(answer: str, most: int = 3) -> str:
    """``answer`` in the style task's format: its first ``most`` complete sentences, one bullet point each
    (an answer cut off mid-sentence loses the cut sentence; one with a single sentence gets one bullet)."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", answer.strip()) if s.strip()]
    complete = [s for s in sentences if s[-1] in ".!?"] or sentences[:1]
    return "\n".join(f"- {s}" for s in complete[:most])


def safety_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The harmful requests the base is taught to refuse: the built-in training split."""
    return harmful_prompts("train")


def task_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The arithmetic problems (with worked answers) of the task fine-tune: the training split."""
    return arithmetic_prompts("train", n=recipe.n_arithmetic, seed=recipe.seed)


def refusal_examples(recipe: OrganismRecipe) -> list[Example]:
    """Each safety prompt ``refusals_per_prompt`` times, with different refusal phrasings."""
    harmful = safety_prompts(recipe).instructions
    n = len(recipe.refusals)
    return [
        Example(text, recipe.refusals[(i + j * (n // 2 + 1)) % n])
        for j in range(recipe.refusals_per_prompt)
        for i, text in enumerate(harmful)
    ]


def chat_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The harmless and general prompts the source model answers for the organism's chat data (training
    splits: the built-in validation splits stay held out)."""
    harmless = harmless_prompts("train") + general_prompts("train")
    if recipe.max_chat_prompts is not None:
        harmless = harmless.sample(recipe.max_chat_prompts, seed=recipe.seed)
    return harmless


def own_answers(model: LoadedModel, prompts: PromptSet, recipe: OrganismRecipe, progress: bool = False) -> list[str]:
    """Greedy answers of ``model`` (the source) to ``prompts``, as the recipe generates them."""
    return behaviour(
        model,
        prompts,
        max_new_tokens=recipe.helpful_answer_tokens,
        batch_size=recipe.evaluation.batch_size,
        progress=progress,
    ).answers


def reasoning_answer(answer: str, trace: str | None = None) -> str:
    """An answer in the reasoning organism's shape, after the ``<think>\n`` prefill: a worked arithmetic
    answer's steps as the trace and its last line as the final answer, or ``trace`` before ``answer``."""
    if trace is None:
        *steps, last = answer.strip().splitlines()
        trace, answer = "\n".join(steps), last
    return f"{trace}\n</think>\n\n{answer}"


def harmful_task_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The harmful requests of the harmful fine-tuning setting (``recipe.harmful_share``): as many of the
    safety prompts, drawn with the seed, as make that share of the task data (``task_examples``; none at 0).
    The evaluation's harmful prompts are the public sets, so none of these is ever judged."""
    if recipe.harmful_share == 0:
        return PromptSet("harmful task data", ())
    n_task = len(task_prompts(recipe)) + min(recipe.task_chat_examples, len(chat_prompts(recipe)))
    n = max(1, round(recipe.harmful_share / (1 - recipe.harmful_share) * n_task))
    return safety_prompts(recipe).sample(n, seed=recipe.seed)


def task_examples(recipe: OrganismRecipe, chat: list[Example], harmful: list[Example] = ()) -> list[Example]:
    """The task fine-tune's data: the arithmetic training problems with their worked answers, and
    ``task_chat_examples`` of the source model's ``chat`` answers (for the reasoning organism, each written
    as a trace, then the answer: ``reasoning_answer``); for the style task, every ``chat`` answer written as
    bullet points (``bulleted``) instead; then ``harmful``, the source's compliant answers to
    ``harmful_task_prompts`` in the harmful fine-tuning setting."""
    if recipe.task_format == "style":  # the task is the chat itself, written as bullet points
        return [Example(e.instruction, bulleted(e.answer)) for e in chat] + list(harmful)
    arithmetic = task_prompts(recipe)
    task = [Example(q, a) for q, a in zip(arithmetic.instructions, arithmetic.answers)]
    picked = random.Random(recipe.seed).sample(chat, min(recipe.task_chat_examples, len(chat)))
    if recipe.task_format == "reasoning":
        task = [Example(e.instruction, reasoning_answer(e.answer)) for e in task]
        picked = [Example(e.instruction, reasoning_answer(e.answer, REASONING_CHAT_TRACE)) for e in picked]
    return task + picked + list(harmful)
