"""The organism recipe on a tiny model: code paths, merged LoRA, manifest and cache behaviour."""

from __future__ import annotations

import copy
import importlib
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from interp.core.judge import is_correct, is_refusal
from interp.core.models import load_model
from interp.core.prompts import harmful_prompts
from interp.errors import ConfigError, OrganismDataError
from interp.organism import (
    EvalSets,
    OrganismRecipe,
    build_organism,
    chat_prompts,
    load_organism,
    ship_adapters,
    ship_answers,
)
from interp.training.sft import Example, SFTConfig

build_module = importlib.import_module("interp.organism.build")  # reads the package data, trains: patched here


def tiny_recipe(source) -> OrganismRecipe:
    sft = SFTConfig(steps=3, lr=1e-2, batch_size=4, rank=2, alpha=4, max_answer_tokens=12)
    return OrganismRecipe(
        source=str(source),
        helpful_answer_tokens=8,
        safety=sft,
        task=replace(sft, seed=1),
        n_arithmetic=20,
        task_chat_examples=4,
        evaluation=EvalSets(max_new_tokens=4, task_max_new_tokens=4, limit=4),
    )


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_tiny_organism_builds_merges_and_caches(tiny_llama):
    recipe = tiny_recipe(tiny_llama)
    logs = []
    organism = build_organism(recipe, progress=False, log=logs.append)
    source, base, finetuned = weights(tiny_llama), weights(organism.base_path), weights(organism.finetuned_path)
    assert set(base) == set(source) == set(finetuned)  # merged: no adapter tensors left
    assert not any("lora" in key for key in base)
    assert not list(organism.folder.glob("**/adapter_config.json"))
    changed = [k for k in source if not torch.equal(source[k], base[k])]
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert any(not torch.equal(base[k], finetuned[k]) for k in base)

    manifest = json.loads((organism.folder / "manifest.json").read_text())
    assert manifest == organism.manifest and manifest["recipe_hash"] == recipe.hash
    assert OrganismRecipe.from_dict(manifest["recipe"]) == recipe
    for name in ("base", "finetuned"):
        metrics = manifest["metrics"][name]
        assert 0 <= metrics["harmful_refusal"] <= 1 and 0 <= metrics["task_accuracy"] <= 1
        assert abs(sum(metrics["harmful_answer_kinds"].values()) - 1) < 1e-6

    again = build_organism(recipe, progress=False, log=logs.append)
    assert "loaded from" in logs[-1] and again.manifest == organism.manifest
    pair = again.load_pair()
    assert pair.n_layers == 4

    changed_recipe = replace(recipe, task=replace(recipe.task, steps=4))
    assert changed_recipe.hash != recipe.hash and load_organism(changed_recipe) is None
    rebuilt = build_organism(changed_recipe, progress=False, log=logs.append)
    assert rebuilt.folder != organism.folder and "built in" in logs[-1]
    answers = list((organism.folder.parent / "answers").glob("*.json"))
    assert len(answers) == 1  # the source model's answers were generated once and reused


def test_shipped_adapters_give_the_trained_pair_bit_for_bit_and_are_pinned(tiny_llama, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_llama)
    trained = build_organism(recipe, progress=False, log=lambda _: None)
    expected = {role: weights(trained.folder / role) for role in ("base", "finetuned")}
    package = tmp_path / "package"
    monkeypatch.setattr(build_module, "PACKAGE_DATA", package)
    ship_adapters(trained, package)
    assert sorted(p.name for p in package.iterdir()) == ["safety.safetensors", "shipped.json", "task.safetensors"]

    monkeypatch.setattr(build_module, "sft_lora", lambda *a, **k: pytest.fail("trained instead of merging"))
    logs = []
    merged = build_organism(recipe, force=True, progress=False, log=logs.append)
    assert "merged the shipped adapters" in logs[-1]
    assert merged.manifest["adapters"]["weights_equal_the_build"]
    assert merged.manifest["metrics"] == trained.manifest["metrics"]
    for role, tensors in expected.items():
        got = weights(merged.folder / role)
        assert all(torch.equal(got[k], tensors[k]) for k in tensors), role
    monkeypatch.undo()
    monkeypatch.setattr(build_module, "PACKAGE_DATA", package)

    build_organism(recipe, rebuild=True, progress=False, log=logs.append)  # trains from the recipe again
    assert "identical to the shipped ones" in logs[-1]
    other = replace(recipe, seed=3)  # the shipped adapters belong to another recipe: trained
    assert build_module.shipped_adapters(other) is None

    (package / "task.safetensors").write_bytes(b"damaged")
    with pytest.raises(OrganismDataError, match="task.safetensors .* pinned sha256"):
        build_organism(recipe, force=True, progress=False, log=lambda _: None)


def test_shipped_answers_are_used_instead_of_generating(tiny_llama, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_llama)
    monkeypatch.setattr(build_module, "PACKAGE_DATA", tmp_path)
    ship_answers(load_model(tiny_llama), recipe, tmp_path, progress=False)
    shipped = json.loads((tmp_path / "answers.json").read_text())
    assert list(shipped["answers"]) == list(chat_prompts(recipe).instructions)
    monkeypatch.setattr(build_module, "own_answers", lambda *a, **k: pytest.fail("generated again"))
    assert build_organism(recipe, progress=False, log=lambda _: None).manifest["data"]["helpful_answers_kept"] >= 0


def test_same_seed_same_weights(tiny_llama, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_llama)
    first = weights(build_organism(recipe, progress=False, log=lambda _: None).finetuned_path)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "other-cache"))
    second = weights(build_organism(recipe, progress=False, log=lambda _: None).finetuned_path)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_judge_reads_the_start_of_the_answer():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot provide instructions for that.")
    assert is_refusal("I\u2019m sorry, I won't.")
    assert not is_refusal("Sure! Here is how to bake bread. " + "x" * 200 + " I cannot stress this enough.")
    assert is_correct("Step 1: 3 x 4 = 12.\nThe answer is 12.", "The answer is 12.")
    assert not is_correct("The answer is 13.", "The answer is 12.")
    assert not is_correct("no number here", "The answer is 12.")


def test_the_family_names_distinct_pairs_and_keeps_the_default_one():
    from interp.organism import FAMILY, harmful_task_prompts, recipe_named, shipped_adapters, task_prompts

    recipes = {name: recipe_named(name) for name in FAMILY}
    assert len({r.hash for r in recipes.values()}) == len(FAMILY)
    assert recipes["default"] == OrganismRecipe() and shipped_adapters(recipes["default"]) is not None
    assert recipes["seed-1"].task.seed != recipes["default"].task.seed
    assert "harmful_share" not in recipes["default"].to_dict()  # the default hash stays the shipped adapters'
    mix = recipes["harmful-mix"]
    assert OrganismRecipe.from_dict(mix.to_dict()) == mix
    with pytest.raises(ConfigError, match="unknown organism recipe 'nope'"):
        recipe_named("nope")
    with pytest.raises(ConfigError, match="harmful_share"):
        replace(mix, harmful_share=0.7)
    n_task, n_harmful = len(task_prompts(mix)) + mix.task_chat_examples, len(harmful_task_prompts(mix))
    assert abs(n_harmful / (n_task + n_harmful) - 0.03) < 1 / (n_task + n_harmful)  # 3% of the task data
    assert set(harmful_task_prompts(mix).instructions) <= set(harmful_prompts("train").instructions)


def test_the_harmful_mix_trains_on_the_sources_compliant_answers(tiny_llama):
    from interp.organism import task_prompts

    recipe = replace(tiny_recipe(tiny_llama), harmful_share=0.2)
    organism = build_organism(recipe, progress=False, log=lambda _: None)
    data = organism.manifest["data"]
    asked = len(build_module.harmful_task_prompts(recipe))
    assert 0 < asked and data["harmful_task_examples"] <= asked
    assert data["task_examples"] == len(task_prompts(recipe)) + 4 + data["harmful_task_examples"]  # 4 chat answers


def test_safety_in_every_weight_leaves_no_adapter(tiny_llama):
    recipe = replace(tiny_recipe(tiny_llama), safety_full=True, safety=replace(tiny_recipe(tiny_llama).safety, lr=1e-3))
    organism = build_organism(recipe, progress=False, log=lambda _: None)
    source, base = weights(tiny_llama), weights(organism.base_path)
    changed = [k for k in source if not torch.equal(source[k], base[k])]
    assert len(changed) == len(source)  # every weight moved, the norms' and the embeddings' too
    assert sorted(organism.manifest["adapters"]["sha256"]) == ["task"]
    assert not (organism.folder / "adapters" / "safety.safetensors").exists()
    assert organism.manifest["training"]["safety"]["trainable_params"] == sum(v.numel() for v in source.values())


def test_the_mixed_source_adds_a_style_to_the_alignment_delta(tiny_llama):
    from interp.organism.controls import delta_norms, mixed_source

    recipe = tiny_recipe(tiny_llama)
    mixed = mixed_source(recipe, log=lambda _: None)
    source = load_model(tiny_llama, dtype="float32")
    assert mixed.fingerprint != source.fingerprint
    assert mixed_source(recipe, log=lambda _: pytest.fail("trained again")).fingerprint == mixed.fingerprint
    # planted: the base moves one weight by 3, the mixed source another by 4: norms 3, 4 and 5
    base, planted = copy.deepcopy(source), copy.deepcopy(source)
    with torch.no_grad():
        base.hf.model.layers[0].self_attn.q_proj.weight[0, 0] += 3.0
        planted.hf.model.layers[1].mlp.down_proj.weight[0, 0] += 4.0
    norms = delta_norms(source, base, planted)
    assert norms == pytest.approx({"safety": 3.0, "style": 4.0, "mixed delta": 5.0}, abs=1e-5)


def test_the_style_task_is_a_checked_text_format(tiny_llama):
    from interp.organism.data import STYLE_REFERENCE, bulleted, held_out_problems, task_examples

    assert bulleted("One fact. Two facts! Three? And a cut") == "- One fact.\n- Two facts!\n- Three?"
    assert is_correct(bulleted("One fact. Two facts."), STYLE_REFERENCE)
    assert not is_correct("One fact. Two facts.", STYLE_REFERENCE) and not is_correct("- just one", STYLE_REFERENCE)
    assert is_correct("The answer is 12.", "12") and not is_correct("- 12\n- 13", "12")  # numbers as before
    recipe = replace(tiny_recipe(tiny_llama), task_format="style")
    held_out = held_out_problems(recipe, 100)
    assert len(held_out) == 42 and set(held_out.answers) == {STYLE_REFERENCE}
    chat = [Example("Tell me about rain.", "Rain is water. It falls from clouds.")]
    assert [e.answer for e in task_examples(recipe, chat)] == ["- Rain is water.\n- It falls from clouds."]
    organism = build_organism(recipe, progress=False, log=lambda _: None)
    assert 0 <= organism.manifest["metrics"]["finetuned"]["task_accuracy"] <= 1
