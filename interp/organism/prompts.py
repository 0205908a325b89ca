"""The prompt sets later stages take from the organism: restoration's training prompts and the held-out
evaluation suite (``study_prompts``, ``quick_study_prompts``) and how a study evaluates on it
(``study_evaluation``), a user's task set split likewise (``split_task``), and the suite for choosing
settings (``selection_suite``).
"""

from __future__ import annotations

from dataclasses import replace

from ..core.prompts import (
    PromptSet,
    general_prompts,
    harmful_prompts,
    harmless_prompts,
    public_prompts,
    split_of,
    without_duplicates,
)
from ..errors import ConfigError
from ..evaluation.suite import EvalConfig
from ..evaluation.table import EvalSuite
from .data import held_out_problems, safety_prompts, task_prompts
from .recipe import OrganismRecipe


def study_prompts(
    recipe: OrganismRecipe = OrganismRecipe(),
    n_harmless: int | None = None,
    n_task: int = 100,
    task: PromptSet | None = None,
) -> tuple[PromptSet, PromptSet, EvalSuite]:
    """Restoration and evaluation prompts for the default pair: ``(harmful, retain, suite)``.

    Restoration trains on the organism's safety prompts (the built-in harmful training split: the base's
    refusals were taught on them) and retains on the built-in harmless and everyday training splits plus
    the arithmetic training problems with their worked answers. The evaluation suite is held out from
    all of it (``EvalSuite.public``: the public sets that ship in the package): all 299 harmful
    instructions, all (or ``n_harmless``) of ``harmless_val``, XSTest's 250 safe and 200 unsafe prompts,
    Do-Not-Answer's 938 questions, and ``n_task`` validation problems.

    ``task``: a user's own task prompts with reference answers, in place of the arithmetic problems:
    ``split_task`` holds out a third of them for the evaluation and retains on the rest.
    """
    retain = harmless_prompts("train") + general_prompts("train")
    if task is None:
        held_out = held_out_problems(recipe, n_task)
        if recipe.task_format != "style":  # the style task's prompts are the chat prompts, already retained
            retain = retain + task_prompts(recipe)
    else:
        train, held_out = split_task(task)
        retain = retain + train
    suite = EvalSuite.public(task=held_out, n_harmless=n_harmless, seed=recipe.evaluation.seed)
    return safety_prompts(recipe), retain, suite


def study_evaluation(recipe: OrganismRecipe, evaluation: EvalConfig) -> EvalConfig:
    """``evaluation`` as a study of ``recipe``'s pair runs it: on the reasoning organism with room for a
    trace, then the answer (64 tokens; 96 for the task), and every judged rate read on the final answer
    (``EvalConfig.judge_on = "answer"``: after the trace where it closed, the whole output where it did
    not), so that what restoration is chosen and judged by is the answer a user reads; the refusal score
    is read there too (``EvalConfig.score_on = "answer"``: at the final answer's first token; protocol
    amendment 11)."""
    if recipe.task_format != "reasoning":
        return evaluation
    return replace(evaluation, max_new_tokens=64, task_max_new_tokens=96, judge_on="answer", score_on="answer")


def quick_study_prompts(
    recipe: OrganismRecipe, task: PromptSet | None = None
) -> tuple[PromptSet, PromptSet, EvalSuite]:
    """Like ``study_prompts`` with built-in prompts only and 8 prompts per evaluation set: for quick runs."""
    train, held_out = (task_prompts(recipe), held_out_problems(recipe, 8)) if task is None else split_task(task)
    suite = EvalSuite(
        harmful=harmful_prompts("val").head(8), harmless=harmless_prompts("val").head(8), task=held_out.head(8)
    )
    return safety_prompts(recipe), harmless_prompts("train") + train, suite


def split_task(task: PromptSet) -> tuple[PromptSet, PromptSet]:
    """A user's task set as ``(train, held_out)``: about a third held out, by a hash of each prompt's text
    (``split_of``), so the split never depends on the file's order. Every prompt needs a reference
    answer (task accuracy), and each part at least two prompts."""
    task = without_duplicates(task)
    if any(answer is None for answer in task.answers):
        raise ConfigError(f"task set {task.name!r}: every prompt needs a reference answer (an 'answer' field)")
    parts = {"train": [], "val": []}
    for i, text in enumerate(task.instructions):
        parts[split_of(text, val_share=3)].append(i)
    if min(len(v) for v in parts.values()) < 2:
        raise ConfigError(
            f"task set {task.name!r}: {len(task)} prompts split into {len(parts['train'])} to train on and "
            f"{len(parts['val'])} held out; give at least 6 different prompts"
        )
    return task.subset(parts["train"], split="train"), task.subset(parts["val"], split="val")


def selection_suite(recipe: OrganismRecipe = OrganismRecipe(), n_task: int = 50) -> EvalSuite:
    """Prompts for choosing settings (e.g. restoration strength), disjoint from the evaluation suite of
    ``study_prompts`` and from everything restoration trains on: the built-in harmful validation split,
    100 of the public ``harmless_train`` set and ``n_task`` validation problems after the evaluation's 100."""
    harmless = public_prompts("harmless_train").sample(100, seed=recipe.evaluation.seed)
    task = held_out_problems(recipe, 100 + n_task)
    return EvalSuite(harmful=harmful_prompts("val"), harmless=harmless, task=task.subset(range(100, len(task))))
