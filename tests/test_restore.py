"""Restoration on tiny models: the safety loss falls while retain activations stay close, LoRA sits on the
mapped layers only, the adapter round-trips onto a plain HF model, and a foreign map is refused."""

from __future__ import annotations

import pytest
import torch
from conftest import layer_map_for, perturbed
from peft import PeftModel
from safetensors.torch import load_file

from interp.core.models import load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import LayerMapError
from interp.training.lora import save_adapter
from interp.training.restore import RestoreConfig, align_positions, restore, schedule


@pytest.fixture()
def setup(tiny_llama):
    base = load_model(tiny_llama)
    finetuned = perturbed(load_model(tiny_llama))
    retain = harmless_prompts("train").head(16) + arithmetic_prompts("train", n=20).head(16)
    return base, finetuned, harmful_prompts("train").head(16), retain


def test_safety_loss_falls_and_retain_stays_close(setup):
    base, finetuned, harmful, retain = setup
    layer_map = layer_map_for(base, finetuned)
    result = restore(
        finetuned, layer_map, harmful, retain, RestoreConfig(steps=30, lr=5e-3, batch_size=8), base=base, progress=False
    )
    history = result.stats.history
    first = sum(h["safety"] for h in history[:3]) / 3
    last = sum(h["safety"] for h in history[-3:]) / 3
    assert last < 0.8 * first
    assert max(h["retain"] for h in history[-5:]) < 0.5 * first


def test_lora_sits_on_the_mapped_layers_only(setup):
    base, finetuned, harmful, retain = setup
    result = restore(
        finetuned,
        layer_map_for(base, finetuned, (0, 3)),
        harmful,
        retain,
        RestoreConfig(steps=1),
        base=base,
        progress=False,
    )
    names = [n for n, p in result.peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {int(n.split("layers.")[1].split(".")[0]) for n in names} == {0, 3}
    assert {n.split(".")[-4] for n in names} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_rank_is_a_restoration_setting(setup, tiny_llama):
    """The same layer map restores at any rank: rank and alpha come from RestoreConfig, not the analysis."""
    base, _, harmful, retain = setup
    counts = {}
    for rank in (2, 4):
        finetuned = perturbed(load_model(tiny_llama))
        layer_map = layer_map_for(base, finetuned, (1,))
        result = restore(
            finetuned,
            layer_map,
            harmful,
            retain,
            RestoreConfig(steps=1, rank=rank, alpha=2 * rank),
            base=base,
            progress=False,
        )
        counts[rank] = result.stats.trainable_params
        assert result.peft_model.peft_config["default"].r == rank and layer_map.lora_rank == 8
    assert counts[4] == 2 * counts[2]


def test_adapter_round_trips_onto_a_plain_model_after_booting_a_bridge(setup, tiny_llama, tmp_path):
    base, finetuned, harmful, retain = setup
    result = restore(
        finetuned,
        layer_map_for(base, finetuned),
        harmful,
        retain,
        RestoreConfig(steps=3, lr=1e-2),
        base=base,
        progress=False,
    )
    trained = result.peft_model
    for param in trained.parameters():  # make the adapter visibly non-zero
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.05)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits

    from interp.core.models import boot_bridge

    boot_bridge(trained.get_base_model(), finetuned.tokenizer, str(tiny_llama))  # wraps modules: the trap
    trained.save_pretrained(tmp_path / "naive")
    naive_keys = load_file(str(tmp_path / "naive" / "adapter_model.safetensors"))
    assert any("_original_component" in k for k in naive_keys)  # the trap is real here

    save_adapter(trained, tmp_path / "adapter")
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert keys and not any("_original_component" in k for k in keys)
    plain = perturbed(load_model(tiny_llama)).hf  # a fresh, un-bridged copy of the fine-tuned weights
    reloaded = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_map_for_another_model_is_refused(setup):
    base, finetuned, harmful, retain = setup
    other = layer_map_for(base, base)  # made for the base, not the fine-tuned model
    with pytest.raises(LayerMapError, match="was made for finetuned model"):
        restore(finetuned, other, harmful, retain, RestoreConfig(steps=1), base=base, progress=False)


def test_reminder_positions_align_prefix_and_tail():
    student = [1, 2, 3, 9, 8]  # prefix 1 2 3, closing template 9 8
    teacher = [1, 2, 3, 7, 7, 9, 8]  # the reminder adds 7 7 before the closing template
    assert align_positions(student, teacher) == [0, 1, 2, 5, 6]
    assert align_positions(student, student) == list(range(5))


def test_schedule_shifts_weight_linearly():
    assert schedule(0, 10) == (1.0, 0.0)
    assert schedule(10, 10) == (0.5, 0.5)
