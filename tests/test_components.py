"""Planted ground truth per component: a fine-tuned model that is the base with the refusal direction
projected out of one component (attention or MLP) of one block. The attribution and the patching sweep
must find that component of that block, and not the other one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.core.bridge import last_logits
from interp.core.chat import ChatFormat, pad_batch
from interp.core.generate import refusal_scores
from interp.core.models import ModelPair, load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.measures.capture import CaptureConfig, capture
from interp.measures.compare import PairActivations, compare
from interp.measures.components import (
    COMPONENTS,
    ComponentAttribution,
    attribute,
    component_hooks,
    patch_sweep,
    split_components,
)
from interp.measures.directions import DiffInMeans

PLANTED = 2  # the edited block (of 4)
WRITER = {"attn": ("self_attn", "o_proj"), "mlp": ("mlp", "down_proj")}
SETS = {
    "harmful": lambda: harmful_prompts("all"),
    "harmless": lambda: harmless_prompts("all"),
    "task": lambda: arithmetic_prompts("train", n=60),
}


def _writer(model, component: str) -> torch.nn.Linear:
    module, linear = WRITER[component]
    return getattr(getattr(model.hf.model.layers[PLANTED], module), linear)


def planted_pair(model_dir, component: str) -> ModelPair:
    """Base: the tiny model with the planted component's writes amplified (so it carries separation).
    Fine-tuned: the base's refusal direction at block PLANTED projected out of that component only."""
    base, finetuned = load_model(model_dir), load_model(model_dir)
    for model in (base, finetuned):
        with torch.no_grad():
            _writer(model, component).weight.mul_(6.0)
    base = base.with_hf(base.hf)
    data = SETS["harmful"]() + SETS["harmless"]()
    acts = capture(base, data, CaptureConfig(), cache_dir=None, progress=False).tensor[:, :, -1]
    u = torch.tensor(DiffInMeans().fit(acts, np.array(data.labels)).directions_[PLANTED], dtype=torch.float32)
    with torch.no_grad():
        weight = _writer(finetuned, component).weight
        weight.copy_((torch.eye(len(u)) - torch.outer(u, u)) @ weight)
    return ModelPair(base, finetuned.with_hf(finetuned.hf))


def measured(pair: ModelPair) -> tuple[ComponentAttribution, PairActivations, np.ndarray]:
    resid, parts = {}, {"base": {}, "ft": {}}
    config = CaptureConfig(hooks=component_hooks(pair.n_layers))
    for role, model in (("base", pair.base), ("ft", pair.finetuned)):
        for kind, prompts in SETS.items():
            resid[f"{role}_{kind}"] = capture(model, prompts(), CaptureConfig(), cache_dir=None, progress=False).tensor[
                :, :, -1
            ]
            parts[role][kind] = split_components(
                capture(model, prompts(), config, cache_dir=None, progress=False).tensor[:, :, -1]
            )
    acts = PairActivations(**resid)
    metrics = compare(acts)
    directions = DiffInMeans().fit(
        np.concatenate([acts.base_harmful, acts.base_harmless]),
        np.repeat([1, 0], [len(acts.base_harmful), len(acts.base_harmless)]),
    )
    # A random model has no refusal token: take the token the base prefers most over the fine-tuned model.
    prompts = harmful_prompts("val").head(8)
    batch = pad_batch(ChatFormat().encode(pair.base.tokenizer, prompts.instructions), pair.base.tokenizer.pad_token_id)

    def log_odds(model) -> torch.Tensor:  # [d_vocab]: each token's refusal log-odds, mean over prompts
        logprobs = torch.log_softmax(last_logits(model.hf, batch.to("cpu")), -1)
        return (logprobs - torch.log1p(-logprobs.exp())).mean(0)

    token = [int(torch.argmax(log_odds(pair.base) - log_odds(pair.finetuned)))]
    patch = patch_sweep(pair.base, pair.finetuned, prompts, token, batch_size=4, progress=False)
    gap = float(
        refusal_scores(pair.base, prompts, token).mean() - refusal_scores(pair.finetuned, prompts, token).mean()
    )
    attribution = attribute(parts["base"], parts["ft"], directions.directions_, metrics.separation_base, patch)
    return attribution, acts, np.array([gap])


@pytest.fixture(scope="module", params=COMPONENTS)
def planted(request, tiny_llama):
    return request.param, *measured(planted_pair(tiny_llama, request.param))


def test_the_planted_component_lost_its_refusal_writes_and_nothing_below_changed(planted):
    component, attribution, _, _ = planted
    row = COMPONENTS.index(component)
    other = 1 - row
    assert attribution.written_finetuned[row, PLANTED] == pytest.approx(0.0, abs=1e-4)  # projected out
    assert attribution.written_base[row, PLANTED] > 0
    np.testing.assert_allclose(attribution.lost[:, :PLANTED], 0.0, atol=1e-5)  # upstream: identical
    if component == "mlp":  # the attention of the same block runs before the MLP: untouched
        assert attribution.lost[other, PLANTED] == pytest.approx(0.0, abs=1e-5)
    assert np.unravel_index(np.nanargmax(attribution.lost), attribution.lost.shape) == (row, PLANTED)


def test_patching_the_planted_component_restores_the_base_and_the_rest_does_not(planted):
    component, attribution, _, gap = planted
    row = COMPONENTS.index(component)
    patch = attribution.patch_effect
    assert gap[0] > 0
    assert patch[row, PLANTED] == pytest.approx(gap[0], abs=1e-4)  # the base model, exactly
    np.testing.assert_allclose(patch[:, :PLANTED], 0.0, atol=1e-4)  # the same outputs there
    if component == "mlp":
        assert patch[0, PLANTED] == pytest.approx(0.0, abs=1e-4)


def test_the_ranking_puts_the_planted_component_first(planted):
    component, attribution, _, _ = planted
    assert attribution.ranked()[0] == (PLANTED, component)
    again = ComponentAttribution.from_dict(attribution.to_dict())
    assert again.ranked() == attribution.ranked()
    np.testing.assert_array_equal(again.score, attribution.score)


def test_the_component_map_names_the_chosen_components_and_round_trips(tiny_llama, tmp_path):
    from conftest import layer_map_for
    from peft import get_peft_model

    from interp.errors import LayerMapError
    from interp.measures.components import COMPONENT_MODULES, component_map
    from interp.measures.layer_map import LayerMap

    model = load_model(tiny_llama)
    blocks = layer_map_for(model, model, selected=(1, 2))
    ranked = [(2, "attn"), (1, "mlp"), (2, "mlp"), (0, "attn")]
    two = component_map(blocks, ranked, 2)
    assert two.modules == {1: list(COMPONENT_MODULES["mlp"]), 2: list(COMPONENT_MODULES["attn"])}
    assert two.selected_layers == [1, 2] and two.alignment_layers == [1, 2, 3]
    three = component_map(blocks, ranked, 3)  # both components of block 2: one entry, all seven modules
    assert three.modules[2] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    three.save(tmp_path / "map.json")
    assert LayerMap.load(tmp_path / "map.json") == three
    peft = get_peft_model(model.hf, two.to_lora_config(rank=2, alpha=4))
    placed = {
        (int(name.split(".layers.")[1].split(".")[0]), name.split(".")[-1])
        for name, module in peft.named_modules()
        if hasattr(module, "lora_A") and ".layers." in name
    }
    assert placed == {(1, m) for m in COMPONENT_MODULES["mlp"]} | {(2, m) for m in COMPONENT_MODULES["attn"]}
    with pytest.raises(LayerMapError, match="between 1 and 4"):
        component_map(blocks, ranked, 5)
