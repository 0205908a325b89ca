"""Upkeep of the organism data shipped in the package (``interp/data/organism/``, written by
``scripts/regenerate_package_data.py``): the default recipe's two fp16 adapters with ``shipped.json``
(their sha256 pins, the weight fingerprints and the measurements of the build), and SmolLM2's own answers
to the chat prompts (``answers.json``). ``interp.organism.build`` reads them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from ..core.models import LoadedModel, load_model
from ..errors import ConfigError, OrganismDataError
from ..io.atomic import atomic_path, atomic_write_json
from .build import ADAPTERS, PACKAGE_DATA, Organism, merged_in_turn, shipped_adapters
from .data import chat_prompts, own_answers
from .recipe import OrganismRecipe


def ship_adapters(organism: Organism, folder: Path = PACKAGE_DATA) -> Path:
    """Write ``organism``'s adapters (trained from its recipe) and ``shipped.json`` (recipe, sha256 pins,
    weight fingerprints, measurements) into ``folder``: the package data ``build_organism`` merges."""
    manifest = organism.manifest
    if manifest["adapters"]["source"] != "trained from the recipe":
        raise ConfigError("only adapters trained from the recipe can be shipped (build with rebuild=True)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ADAPTERS:
        with atomic_path(folder / f"{name}.safetensors") as tmp:
            shutil.copyfile(organism.folder / "adapters" / f"{name}.safetensors", tmp)
    keep = ("recipe", "recipe_hash", "seeds", "data", "training", "metrics", "fingerprints", "versions")
    shipped = {k: manifest[k] for k in keep} | {"sha256": manifest["adapters"]["sha256"]}
    return atomic_write_json(folder / "shipped.json", shipped)


def refresh_shipped_fingerprints(recipe: OrganismRecipe | None = None, folder: Path = PACKAGE_DATA) -> dict:
    """Rewrite the weight fingerprints in ``shipped.json`` and ``answers.json`` after the fingerprint
    *function* changed (``interp.core.models.model_fingerprint``): the shipped adapters (checked by their
    sha256) are merged into the source as ``build_organism`` merges them, and the new fingerprints of
    source, base and fine-tuned are written. Neither the adapters nor the answers change."""
    recipe = recipe or OrganismRecipe()
    shipped = shipped_adapters(recipe)
    if shipped is None:
        raise OrganismDataError(f"no shipped adapters for recipe {recipe.hash} in {folder}")
    source = load_model(recipe.source)
    fingerprints = {"source": source.fingerprint}
    for role, _, model in merged_in_turn(source, recipe, folder):
        fingerprints[role] = model.fingerprint
    atomic_write_json(folder / "shipped.json", shipped | {"fingerprints": fingerprints})
    answers = json.loads((folder / "answers.json").read_text())
    atomic_write_json(folder / "answers.json", answers | {"source_fingerprint": fingerprints["source"]})
    return fingerprints


def ship_answers(
    model: LoadedModel, recipe: OrganismRecipe, folder: Path = PACKAGE_DATA, progress: bool = True
) -> Path:
    """Generate the source model's answers to every chat prompt of ``recipe`` (no cap) and write them to
    ``folder / "answers.json"`` with the weights fingerprint and answer length they belong to."""
    prompts = chat_prompts(replace(recipe, max_chat_prompts=None))
    answers = own_answers(model, prompts, recipe, progress)
    return atomic_write_json(
        folder / "answers.json",
        {
            "source_fingerprint": model.fingerprint,
            "max_new_tokens": recipe.helpful_answer_tokens,
            "prompts": {"name": prompts.name, "n": len(prompts), "hash": prompts.hash},
            "answers": dict(zip(prompts.instructions, answers)),
        },
    )
