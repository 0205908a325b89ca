"""The organism recipe end to end on the real default model, with a reduced step count (CI budget)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from interp.io import cache_root
from interp.models import default_model_path
from interp.organism import EvalSets, OrganismRecipe, build_organism

pytestmark = pytest.mark.slow


def test_reduced_real_organism_builds(tmp_path, monkeypatch):
    # A fresh cache for the organism, so that it is really built, sharing the converted default model.
    shared_models = cache_root() / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    default_model_path()
    default = OrganismRecipe()
    recipe = replace(
        default, max_chat_prompts=12, n_arithmetic=40, task_chat_examples=4,
        safety=replace(default.safety, steps=3), task=replace(default.task, steps=3),
        evaluation=EvalSets(limit=8, max_new_tokens=16, task_max_new_tokens=24),
    )
    logs = []
    organism = build_organism(recipe, progress=False, log=logs.append)
    assert "built in" in logs[-1]
    manifest = organism.manifest
    assert set(manifest["metrics"]) == {"base", "finetuned"}
    assert manifest["data"]["eval_sizes"] == {"harmful": 8, "harmless": 8, "arithmetic": 8}
    assert manifest["training"]["safety"]["steps"] == 3 and manifest["seconds"]["total"] > 0
    pair = organism.load_pair()
    assert pair.n_layers == 30
