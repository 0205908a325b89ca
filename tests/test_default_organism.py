"""The organism recipe end to end on the real default model, with a reduced step count (CI budget)."""

from __future__ import annotations

import pytest

from interp.core.sources import default_model_path
from interp.io import cache_root
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
