"""Planted ground truth: a fine-tuned model that is the base with a known direction projected out of one
known block's writes. The measures, the causal sweep and the ranking must find that block."""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from interp.analyze import AnalysisConfig, AnalysisPrompts, analyze
from interp.core.bridge import (
    BRIDGE_KEY_PART,
    ablate_direction,
    add_vector,
    block_outputs,
    intervene,
    last_logits,
    resid_hook,
)
from interp.core.chat import ChatFormat, pad_batch
from interp.core.generate import generate, refusal_scores
from interp.core.models import ModelPair, load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.measures.capture import CaptureConfig, Positions, capture
from interp.measures.causal import causal_sweep, steering_edits
from interp.measures.compare import PairActivations, compare
from interp.measures.directions import DiffInMeans
from interp.measures.layer_map import build_layer_map
from interp.measures.result import AnalysisResult

PLANTED = 2  # the edited block (of 4)


def planted_pair(model_dir) -> tuple[ModelPair, np.ndarray]:
    """Base: the tiny model with block PLANTED's writes amplified, so that block carries much of the
    harmful-vs-harmless separation. Fine-tuned: the same weights with the base's difference-in-means
    direction at that block projected out of its attention and MLP output matrices."""
    base, finetuned = load_model(model_dir), load_model(model_dir)
    for model in (base.hf, finetuned.hf):
        block = model.model.layers[PLANTED]
        with torch.no_grad():
            block.self_attn.o_proj.weight.mul_(6.0)
            block.mlp.down_proj.weight.mul_(6.0)
    base, finetuned = base.with_hf(base.hf), finetuned.with_hf(finetuned.hf)
    data = harmful_prompts("all") + harmless_prompts("all")
    acts = capture(base, data, CaptureConfig(), cache_dir=None, progress=False).tensor[:, :, -1]
    u = DiffInMeans().fit(acts, np.array(data.labels)).directions_[PLANTED]
    P = torch.eye(len(u)) - torch.outer(torch.tensor(u, dtype=torch.float32), torch.tensor(u, dtype=torch.float32))
    block = finetuned.hf.model.layers[PLANTED]
    with torch.no_grad():
        block.self_attn.o_proj.weight.copy_(P @ block.self_attn.o_proj.weight)
        block.mlp.down_proj.weight.copy_(P @ block.mlp.down_proj.weight)
    return ModelPair(base, finetuned.with_hf(finetuned.hf)), u


def pair_activations(pair: ModelPair) -> PairActivations:
    sets = {
        "harmful": harmful_prompts("all"),
        "harmless": harmless_prompts("all"),
        "task": arithmetic_prompts("train", n=60),
    }
    out = {}
    for role, model in (("base", pair.base), ("ft", pair.finetuned)):
        for kind, prompts in sets.items():
            out[f"{role}_{kind}"] = capture(model, prompts, CaptureConfig(), cache_dir=None, progress=False).tensor[
                :, :, -1
            ]
    return PairActivations(**out)


@pytest.fixture(scope="module")
def planted(tiny_llama):
    pair, u = planted_pair(tiny_llama)
    return pair, u, pair_activations(pair)


def test_suppression_appears_at_the_planted_block_and_decodability_survives(planted):
    pair, _, acts = planted
    metrics = compare(acts)
    retention = metrics.retention
    assert np.allclose(retention[:PLANTED], 1.0, atol=1e-5)  # upstream of the edit: identical
    assert retention[PLANTED] < 0.5  # separation along the base direction is mostly gone there
    assert metrics.refusal_cosine[PLANTED] < metrics.refusal_cosine[PLANTED - 1]
    # Suppressed, not removed: downstream of the edit, harmfulness is as decodable as in the base (a random
    # tiny model decodes it at about 0.75 from the last token), while the base's own probe no longer reads it.
    after = PLANTED + 1
    assert metrics.probe_acc_finetuned[after] >= max(0.65, metrics.probe_acc_base[after] - 0.05)
    assert metrics.probe_acc_transfer[after] < metrics.probe_acc_finetuned[after] - 0.1


def test_causal_sweep_and_ranking_put_the_planted_block_first(planted):
    pair, _, acts = planted
    metrics = compare(acts)
    base_dirs = DiffInMeans().fit(
        np.concatenate([acts.base_harmful, acts.base_harmless]),
        np.repeat([1, 0], [len(acts.base_harmful), len(acts.base_harmless)]),
    )
    # Any token works as the 'refusal' token of a random model; the sweep must still be consistent.
    token = pair.base.tokenizer("I", add_special_tokens=False).input_ids[:1]
    sweep = causal_sweep(
        pair.base, pair.finetuned, harmful_prompts("val").head(8), base_dirs.diff_, token, progress=False
    )
    patch = sweep.patch_effect
    gap = sweep.score_base - sweep.score_finetuned
    assert np.allclose(patch[:PLANTED], 0.0, atol=1e-4)  # patching before the edit changes nothing
    assert np.allclose(patch[PLANTED:], gap, atol=1e-3)  # after it, the base state is fully restored
    layer_map = build_layer_map(metrics, sweep, base=pair.base, finetuned=pair.finetuned, k=1)
    assert layer_map.ranked_layers[0] == PLANTED and layer_map.selected_layers == [PLANTED]


def test_causal_sweep_resumed_from_the_residual_equals_full_forwards_with_hooks(planted):
    """The sweep resumes each intervention after its block; the same edits as hooks on a full forward
    (every block from the embeddings) give the same effects, the last block included."""
    pair, _, acts = planted
    directions = DiffInMeans().fit(
        np.concatenate([acts.base_harmful, acts.base_harmless]),
        np.repeat([1, 0], [len(acts.base_harmful), len(acts.base_harmless)]),
    )
    prompts, token = harmful_prompts("val").head(6), pair.base.tokenizer("I", add_special_tokens=False).input_ids[:1]
    sweep = causal_sweep(pair.base, pair.finetuned, prompts, directions.diff_, token, batch_size=4, progress=False)
    vectors = torch.tensor(directions.diff_, dtype=torch.float32)
    last = pair.finetuned.n_layers - 1
    for layer in (0, PLANTED, last):
        unit = vectors[layer] / vectors[layer].norm()
        with intervene(pair.finetuned.hf, {layer: add_vector(vectors[layer])}):
            added = refusal_scores(pair.finetuned, prompts, token, batch_size=4).mean()
        with intervene(pair.base.hf, {layer: ablate_direction(unit)}):
            ablated = refusal_scores(pair.base, prompts, token, batch_size=4).mean()
        assert sweep.add_effect[layer] == pytest.approx(float(added) - sweep.score_finetuned, abs=1e-5)
        assert sweep.ablate_effect[layer] == pytest.approx(sweep.score_base - float(ablated), abs=1e-5)
    assert abs(sweep.add_effect[last]) > 1e-4  # the last block's edit does reach the logits


def test_booting_the_bridge_leaves_the_model_plain(tiny_model_dir):
    model = load_model(tiny_model_dir)
    prompts = harmful_prompts("val").head(3)
    before = generate(model, prompts, max_new_tokens=6, cache=False, progress=False)
    attention = model.hf.config._attn_implementation
    _ = model.bridge  # boot the bridge (on a copy)
    assert model.hf.config._attn_implementation == attention != "eager"
    assert not any(BRIDGE_KEY_PART in name for name, _ in model.hf.named_modules())
    assert generate(model, prompts, max_new_tokens=6, cache=False, progress=False) == before


def test_steering_hook_fires_during_hf_generate(tiny_llama):
    model = load_model(tiny_llama)
    prompts = harmful_prompts("val").head(2)
    plain = generate(model, prompts, max_new_tokens=5, progress=False)
    vector = torch.zeros(model.d_model)
    vector[0] = 1000.0
    steered = generate(model, prompts, max_new_tokens=5, edits=steering_edits(1, vector), progress=False)
    assert steered != plain
    assert generate(model, prompts, max_new_tokens=5, progress=False) == plain  # hook removed afterwards


def test_last_logits_match_the_full_forward(tiny_llama):
    model = load_model(tiny_llama)
    batch = pad_batch(ChatFormat().encode(model.tokenizer, ["hi", "how are you today"]), model.tokenizer.pad_token_id)
    fast = last_logits(model.hf, batch.to("cpu"))
    with torch.no_grad():
        full = model.hf(**batch.to("cpu")).logits[:, -1]
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=0)


def test_one_residual_stream_for_capture_causal_checks_and_restoration(tiny_model_dir):
    """The bridge hook that capture reads and the decoder-layer output that restoration and the causal
    checks read are the same tensor, at every layer, the last one included (before the final norm)."""
    model = load_model(tiny_model_dir)
    prompts = harmful_prompts("val").head(3)
    captured = capture(
        model, prompts, CaptureConfig(positions=Positions.last_k(2)), cache_dir=None, progress=False
    ).tensor  # [prompt, layer, position, d_model]
    seqs = ChatFormat().encode(model.tokenizer, prompts.instructions)
    for row, seq in enumerate(seqs):  # one prompt at a time: no padding
        batch = pad_batch([seq], model.tokenizer.pad_token_id)
        with torch.no_grad():
            outputs = block_outputs(model.hf, batch.to("cpu"), list(range(model.n_layers)))
        for layer, output in enumerate(outputs):
            torch.testing.assert_close(captured[row, layer], output[0, -2:], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        final = model.hf(**batch.to("cpu"), output_hidden_states=True).hidden_states[-1]
    assert not torch.allclose(final, outputs[-1])  # HF's last hidden state comes after the final norm
    assert resid_hook(model.n_layers - 1) in model.bridge.hook_dict


def test_analyze_writes_a_run_folder(planted, tmp_path, monkeypatch):
    pair, _, _ = planted
    small = AnalysisPrompts(
        harmful=harmful_prompts("train").head(24),
        harmless=harmless_prompts("train").head(24),
        task=arithmetic_prompts("train", n=30).head(24),
        steer_harmful=harmful_prompts("val").head(4),
        steer_harmless=harmless_prompts("val").head(4),
    )
    # A random model never refuses, so name a 'refusal' token instead of reading its answers for one.
    config = AnalysisConfig(k=2, causal_prompts=4, steer_max_new_tokens=4, refusal_tokens=(5,))
    result = analyze(pair, tmp_path / "run", config, small, progress=False, log=lambda _: None)
    for name in (
        "metrics.json",
        "layer_map.json",
        "component_map.json",
        "analysis.safetensors",
        "layer_table.md",
        "activations/base-harmful/meta.json",
    ):
        assert (tmp_path / "run" / name).exists(), name
    assert len(result.layer_map.selected_layers) == 2
    assert [row["scale"] for row in result.steering.steered] == [1.0, 2.0]
    assert result.steering.layer == result.steer_layer
    assert result.refusal_tokens == [5]

    # The result round-trips through its folder: what restoration and the study read.
    loaded = AnalysisResult.load(tmp_path / "run")
    assert loaded.layer_map == result.layer_map and loaded.steering == result.steering
    assert loaded.refusal_tokens == [5] and loaded.steer_layer == result.steer_layer
    np.testing.assert_array_equal(loaded.refusal_vectors, result.refusal_vectors)
    np.testing.assert_allclose(loaded.metrics.retention, result.metrics.retention)
    np.testing.assert_allclose(loaded.sweep.add_effect, result.sweep.add_effect)
    assert loaded.pca.layer == result.layer_map.ranked_layers[0] and loaded.pca.base.shape == (48, 2)
    # Every measure at each of the 5 post-instruction positions; the ranking's metrics are the last one's.
    assert loaded.positions.positions == ["-5", "-4", "-3", "-2", "-1"] and len(loaded.positions.tokens) == 5
    assert loaded.positions.grid("retention").shape == (5, pair.n_layers)
    np.testing.assert_allclose(result.positions.last.retention, result.metrics.retention)
    np.testing.assert_allclose(loaded.positions.grid("retention"), result.positions.grid("retention"))
    # The component attribution, its map (k = 2 components, fewer modules than 2 blocks) and the selection.
    np.testing.assert_array_equal(loaded.components.score, result.components.score)
    top = result.components.ranked()[:2]
    assert loaded.component_map == result.component_map
    assert sorted({layer for layer, _ in top}) == result.component_map.selected_layers
    assert sum(map(len, result.component_map.modules.values())) < 2 * 7
    assert loaded.selection.to_dict() == result.selection.to_dict()
    layer, vector, where = loaded.steering_direction()  # the steering baseline: the selected direction
    if result.selection.selected_layer is None:
        assert layer == result.steer_layer and where == f"layer {layer}"
    else:
        assert layer == result.selection.selected_layer and "selected direction" in where
        np.testing.assert_array_equal(vector, result.selection.vector)
    assert np.isfinite(result.selection.induce[:, : result.selection.max_layer]).all()
    assert "| component |" in (tmp_path / "run" / "layer_table.md").read_text()
    # The score's spread over prompt resamples: centred on the map's scores, kept, and in the layer table.
    np.testing.assert_allclose(result.spread.score, result.layer_map.scores, atol=1e-5)
    assert loaded.spread == result.spread and result.spread.k == 2 and result.spread.n_prompts["causal"] == 4
    table = (tmp_path / "run" / "layer_table.md").read_text()
    assert "score 95% interval" in table and f"is the map's in {result.spread.same_top_k:.0%}" in table

    # Without scales the generation check is skipped; the best add layer and refusal tokens remain; the
    # causal sweep of the same pair, prompts and vectors comes from the cache.
    sweeps = []
    analyze_module = importlib.import_module("interp.analyze")  # the module (interp.analyze is the function)
    monkeypatch.setattr(analyze_module, "causal_sweep", lambda *a, **k: sweeps.append(1))
    quiet = analyze(
        pair, tmp_path / "run2", replace(config, steer_scales=()), small, progress=False, log=lambda _: None
    )
    assert quiet.steering is None and AnalysisResult.load(tmp_path / "run2").steering is None
    assert quiet.steer_layer == result.steer_layer and quiet.refusal_tokens == [5]
    assert not sweeps and quiet.sweep.to_dict() == result.sweep.to_dict()

    # The same analysis again is loaded whole from the cache: nothing is measured, the folder is complete.
    monkeypatch.setattr(analyze_module, "position_metrics", lambda *a, **k: pytest.fail("measured again"))
    again = analyze(pair, tmp_path / "run3", config, small, progress=False, log=lambda _: None)
    assert again.layer_map == result.layer_map and again.steering == result.steering
    assert (tmp_path / "run3" / "activations" / "ft-task" / "meta.json").exists()
    assert (tmp_path / "run3" / "layer_table.md").read_text() == (tmp_path / "run" / "layer_table.md").read_text()

    # An analysis cached before the spread existed gets it when it writes a folder, from its activations.
    acts = analyze_module.capture_pair(pair, small, config, ChatFormat(), False)
    analyze_module._write(tmp_path / "run4", replace(result, spread=None), acts, lambda _: None)
    assert (tmp_path / "run4" / "layer_table.md").read_text() == table
