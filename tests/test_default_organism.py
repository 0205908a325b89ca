"""The organism recipe end to end on the real default model, with a reduced step count (CI budget)."""

from __future__ import annotations

import pytest

from interp.core.sources import default_model_path
from interp.io.cache import cache_root
from interp.organism import OrganismRecipe, build_organism

pytestmark = pytest.mark.slow


def test_reduced_real_organism_builds(tmp_path, monkeypatch):
    # A fresh cache for the organism, so that it is really built, sharing the converted default model.
    shared_models = cache_root() / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    default_model_path()
    recipe = OrganismRecipe.quick()  # the same reduced organism as the notebooks
    logs = []
    organism = build_organism(recipe, progress=False, log=logs.append)
    assert "built in" in logs[-1]
    manifest = organism.manifest
    assert set(manifest["metrics"]) == {"base", "finetuned"}
    assert manifest["data"]["eval_sizes"] == {"harmful": 8, "harmless": 8, "arithmetic": 8}
    assert manifest["training"]["safety"]["steps"] == 3 and manifest["seconds"]["total"] > 0
    pair = organism.load_pair()
    assert pair.n_layers == 30


def test_reduced_reasoning_organism_builds_and_judges_trace_and_answer(tmp_path, monkeypatch):
    """The reasoning recipe end to end on the real default model (reduced): its task data are traces then
    answers, and its measurements judge both parts."""
    from interp.organism.data import reasoning_answer, task_examples
    from interp.report.study_tables import organism_table

    shared_models = cache_root() / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    default_model_path()
    recipe = OrganismRecipe.reasoning(quick=True)
    assert recipe.hash != OrganismRecipe.quick().hash and recipe.chat.prefill == "<think>\n"
    assert OrganismRecipe().hash == OrganismRecipe.from_dict(OrganismRecipe().to_dict()).hash  # default unchanged
    examples = task_examples(recipe, [])
    assert all("\n</think>\n\n" in e.answer for e in examples)
    assert (
        reasoning_answer("Step 1: 2 + 2 = 4.\nThe answer is 4.") == "Step 1: 2 + 2 = 4.\n</think>\n\nThe answer is 4."
    )
    organism = build_organism(recipe, progress=False, log=lambda _: None)
    for metrics in organism.manifest["metrics"].values():
        parts = metrics["parts"]["harmful"]
        assert set(parts) == {"trace_refusal", "answer_refusal", "closed"} and 0 <= parts["closed"] <= 1
    assert "refusal in the final answer" in organism_table(organism.manifest)
