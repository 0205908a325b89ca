"""Held-out means held out: no prompt that any stage trains on appears in a set the evaluation uses by
default, on the real default recipe's prompt lists; built-in splits never depend on how many are asked for."""

from __future__ import annotations

import re

import pytest

from interp.analyze import AnalysisPrompts
from interp.cli.parser import build_parser
from interp.core.prompts import arithmetic_prompts, harmful_prompts, parse_spec
from interp.organism import (
    OrganismRecipe,
    chat_prompts,
    eval_sets,
    quick_study_prompts,
    safety_prompts,
    selection_suite,
    study_prompts,
    task_prompts,
)


def normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def texts(*prompt_sets) -> set[str]:
    return {normal(t) for prompts in prompt_sets for t in prompts.instructions}


def trained_on(recipe: OrganismRecipe) -> dict[str, set[str]]:
    """Every prompt a stage trains on: the organism's safety, chat and task data, restoration's data."""
    harmful, retain, _ = quick_study_prompts(recipe)
    out = {
        "organism safety": texts(safety_prompts(recipe)),
        "organism chat": texts(chat_prompts(recipe)),
        "organism task": texts(task_prompts(recipe)),
        "restore harmful (quick)": texts(harmful),
        "restore retain (quick)": texts(retain),
    }
    harmful, retain, _ = study_prompts(recipe)
    out |= {"restore harmful": texts(harmful), "restore retain": texts(retain)}
    return out


def evaluated_on(recipe: OrganismRecipe) -> dict[str, set[str]]:
    """Every set the evaluation reads by default: the study's suite, the organism's measurement, the
    analysis's steering check, and `interp evaluate`'s defaults."""
    out = {f"organism eval {k}": texts(v) for k, v in eval_sets(recipe).items()}
    _, _, quick = quick_study_prompts(recipe)
    out |= {f"quick suite {name}": texts(p) for name, p in quick.sets().items()}
    steer = AnalysisPrompts.held_out_for_organism()
    out |= {
        "steering check harmful": texts(steer.steer_harmful),
        "steering check harmless": texts(steer.steer_harmless),
    }
    evaluate = build_parser().parse_args(["evaluate", "--out", "x"])
    for option in ("harmful", "harmless", "task"):
        out[f"interp evaluate --{option}"] = texts(parse_spec(getattr(evaluate, option)))
    _, _, suite = study_prompts(recipe)
    out |= {f"study suite {name}": texts(p) for name, p in suite.sets().items()}
    return out


def leaks(train: dict[str, set[str]], evaluation: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    return {(t, e): sorted(train[t] & evaluation[e])[:2] for t in train for e in evaluation if train[t] & evaluation[e]}


@pytest.mark.parametrize("recipe", [OrganismRecipe(), OrganismRecipe.quick()], ids=["default", "quick"])
def test_nothing_trained_on_is_evaluated_by_default(recipe):
    train, evaluation = trained_on(recipe), evaluated_on(recipe)
    assert all(train.values()) and all(evaluation.values())
    assert leaks(train, evaluation) == {}


def test_the_study_suite_is_held_out_from_the_layer_selection():
    """The analysis reads (never trains on) built-in prompts; the layer map it selects is evaluated on
    prompts it never read."""
    analysis = AnalysisPrompts.held_out_for_organism()
    selected_on = {f"analysis {name}": texts(getattr(analysis, name)) for name in ("harmful", "harmless", "task")}
    _, _, suite = study_prompts(OrganismRecipe())
    evaluated = {f"study suite {name}": texts(p) for name, p in suite.sets().items()}
    assert all(evaluated.values()) and leaks(selected_on, evaluated) == {}


def test_settings_are_chosen_on_prompts_neither_trained_on_nor_evaluated():
    recipe = OrganismRecipe()
    chosen_on = {f"selection {name}": texts(p) for name, p in selection_suite(recipe).sets().items()}
    _, _, suite = study_prompts(recipe)
    evaluated = {f"study suite {name}": texts(p) for name, p in suite.sets().items()}
    assert all(chosen_on.values()) and leaks(chosen_on, evaluated) == {}
    assert leaks(trained_on(recipe), chosen_on) == {}


def test_the_checker_finds_a_planted_leak():
    recipe = OrganismRecipe()
    train = trained_on(recipe) | {"planted": texts(harmful_prompts("val").head(1))}
    found = leaks(train, evaluated_on(recipe))
    assert ("planted", "interp evaluate --harmful") in found and all(t == "planted" for t, _ in found)


@pytest.mark.parametrize("n", [10, 40, 200, 250, 1000])
def test_arithmetic_splits_do_not_depend_on_n(n):
    every_val, every_train = (
        set(arithmetic_prompts("val", n=2000).instructions),
        set(arithmetic_prompts("train", n=2000).instructions),
    )
    val, train = arithmetic_prompts("val", n=n), arithmetic_prompts("train", n=n)
    assert set(val.instructions) <= every_val and set(train.instructions) <= every_train
    assert not every_val & every_train
    assert len(set(val.instructions) | set(train.instructions)) == n  # n distinct problems in all
    assert 0.1 < len(every_val) / 2000 < 0.3
