"""The compute dtype: chosen for the device, named when wrong, and bfloat16 paths that match float32 within
stated tolerances on tiny models (what must be exact stays float32)."""

from __future__ import annotations

import pytest
import torch
from conftest import layer_map_for, perturbed

from interp.cli import common
from interp.core import models
from interp.core.bridge import last_logits
from interp.core.chat import ChatFormat, pad_batch
from interp.core.generate import refusal_scores
from interp.core.models import compute_dtype, load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.measures.capture import CaptureConfig, capture
from interp.training.restore import restore
from interp.training.restore_config import RestoreConfig
from interp.training.sft import Example, SFTConfig, sft_lora


def bf16_cpu(monkeypatch, units: dict) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: units)


def test_the_device_decides_the_compute_dtype(monkeypatch):
    bf16_cpu(monkeypatch, {"amx_bf16": True, "avx512_bf16": True})
    assert compute_dtype("cpu") == ("bfloat16", "CPU with AMX-BF16 and AVX512-BF16")
    bf16_cpu(monkeypatch, {"avx512_bf16": True})
    assert compute_dtype("cpu")[0] == "bfloat16"
    bf16_cpu(monkeypatch, {"avx2": True})  # bf16 would be emulated: slower than float32
    assert compute_dtype("cpu") == ("float32", "CPU without bf16 matrix units")
    assert compute_dtype("mps")[0] == "float32"


def test_auto_loads_the_devices_dtype_and_a_wrong_name_is_one_line(tiny_llama, monkeypatch):
    bf16_cpu(monkeypatch, {"amx_bf16": True})
    assert load_model(tiny_llama, dtype="auto").dtype == "bfloat16"
    bf16_cpu(monkeypatch, {})
    assert load_model(tiny_llama, dtype="auto").dtype == "float32"
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"):
        load_model(tiny_llama, dtype="fp8")


def test_the_command_line_offers_the_same_dtypes_and_recipes():
    assert common.DTYPE_CHOICES == models.DTYPE_CHOICES
    from interp.organism import FAMILY

    assert common.RECIPE_CHOICES == FAMILY


def test_the_weights_dtype_is_in_the_fingerprint(tiny_llama):
    # every cache is keyed by the fingerprint, so nothing computed in one dtype is read back in another
    assert load_model(tiny_llama).fingerprint != load_model(tiny_llama, dtype="bfloat16").fingerprint


def test_a_frozen_model_projects_the_last_position_without_copying_the_unembedding(tiny_llama):
    # Frozen weights (a merged restoration) once made torch copy the [d_vocab, d_model] weight per row
    # (aten::bmm on a broadcast weight) when logits_to_keep sliced the last position.
    model = load_model(tiny_llama)
    for p in model.hf.parameters():
        p.requires_grad_(False)
    seqs = ChatFormat().encode(model.tokenizer, harmful_prompts("val").instructions[:6])
    batch = pad_batch(seqs, model.tokenizer.pad_token_id)
    inputs = {"input_ids": batch.ids, "attention_mask": batch.mask}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        last = last_logits(model.hf, inputs)
    assert "aten::bmm" not in {event.key for event in profile.key_averages()}
    with torch.no_grad():
        full = model.hf(**inputs).logits[:, -1].float()
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-5)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(2), b.flatten(2), dim=-1)


def test_bf16_activations_are_float32_and_within_tolerance(tiny_model_dir):
    # Tolerance: every captured residual vector within cosine 0.999 of float32's (bf16 keeps 8 bits of
    # mantissa: about 3 significant digits per element).
    prompts = harmful_prompts("val").head(6)
    config = CaptureConfig(batch_size=4)
    exact = capture(load_model(tiny_model_dir), prompts, config, cache_dir=None, progress=False)
    fast = capture(load_model(tiny_model_dir, dtype="bfloat16"), prompts, config, cache_dir=None, progress=False)
    assert fast.tensor.dtype == torch.float32
    assert _cosines(fast.tensor, exact.tensor).min() > 0.999


def test_bf16_refusal_scores_are_within_tolerance(tiny_llama):
    # Tolerance: log-odds within 0.1 nats (log-softmax taken in float32 on bf16 logits).
    prompts = harmful_prompts("val").head(8)
    tokens = [5, 9, 17]
    exact = refusal_scores(load_model(tiny_llama), prompts, tokens)
    fast = refusal_scores(load_model(tiny_llama, dtype="bfloat16"), prompts, tokens)
    assert (fast - exact).abs().max() < 0.1


def test_bf16_restoration_trains_float32_lora_to_the_same_losses(tiny_llama):
    # LoRA weights, their gradients and AdamW's moments stay float32 on bfloat16 frozen weights; the losses
    # (distances taken in float32) follow float32's within 5% at every step.
    harmful = harmful_prompts("train").head(16)
    retain = harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8)
    config = RestoreConfig(steps=6, lr=5e-3, batch_size=8)
    histories = {}
    for dtype in ("float32", "bfloat16"):
        base = load_model(tiny_llama, dtype=dtype)
        finetuned = perturbed(load_model(tiny_llama, dtype=dtype))
        result = restore(finetuned, layer_map_for(base, finetuned), harmful, retain, config, base=base, progress=False)
        lora = [p for name, p in result.peft_model.named_parameters() if "lora_" in name]
        assert lora and {p.dtype for p in lora} == {torch.float32}
        histories[dtype] = result.stats.history
    for exact, fast in zip(histories["float32"], histories["bfloat16"], strict=True):
        for part in ("safety", "retain"):
            assert fast[part] == pytest.approx(exact[part], rel=0.05, abs=1e-3)


def test_bf16_autocast_fine_tune_keeps_float32_weights_and_losses(tiny_llama):
    examples = [Example(q, "I cannot help with that.") for q in harmful_prompts("train").instructions[:16]]
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = SFTConfig(steps=4, batch_size=4, lr=1e-3, compute_dtype=dtype)
        results[dtype] = sft_lora(load_model(tiny_llama), examples, config, progress=False)
    fast = results["bfloat16"]
    assert {p.dtype for p in fast.model.hf.parameters()} == {torch.float32}
    assert fast.stats["loss_first"] == pytest.approx(results["float32"].stats["loss_first"], rel=0.02)
    assert fast.stats["loss_last"] == pytest.approx(results["float32"].stats["loss_last"], rel=0.05)
    with pytest.raises(ConfigError, match="compute_dtype"):
        SFTConfig(compute_dtype="float16")


def test_the_command_line_prints_its_choice_and_records_the_dtype_that_ran(tiny_llama, tmp_path, capsys, monkeypatch):
    import tomllib

    from interp.cli import main

    bf16_cpu(monkeypatch, {"amx_bf16": True})
    argv = ["capture", "--model", str(tiny_llama), "--prompts", "builtin:harmful:val", "--limit", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "compute dtype: bfloat16 (CPU with AMX-BF16; --dtype overrides)" in capsys.readouterr().out
    written = tomllib.loads((tmp_path / "a" / "config.toml").read_text())
    assert written["dtype"] == "bfloat16"  # what ran, not "auto": a rerun elsewhere computes the same
    assert main([*argv, "--dtype", "float32", "--out", str(tmp_path / "b")]) == 0
    assert "compute dtype" not in capsys.readouterr().out
    assert tomllib.loads((tmp_path / "b" / "config.toml").read_text())["dtype"] == "float32"
