"""Capture through bridge hooks agrees with Hugging Face, is padding-independent and caches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.core.bridge import decoder_layers, hook_names
from interp.core.chat import ChatFormat
from interp.core.models import load_model
from interp.core.prompts import PromptSet, harmful_prompts
from interp.errors import EmptyPromptSetError, PositionOutOfRangeError, UnknownHookError
from interp.measures.capture import Activations, CaptureConfig, Positions, capture

# Bridge vs HF residuals in float32 on CPU: the bridge runs the HF modules themselves, so we expect
# agreement to float rounding; the tolerance is 1e-5 absolute.
ATOL = 1e-5


def prompts(n: int = 6) -> PromptSet:
    return harmful_prompts("train").head(n)


def hf_reference(model_dir, texts, tokenizer) -> list[torch.Tensor]:
    """Each block's output for each prompt, run alone through plain HF with eager attention."""
    hf = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    outs = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        layer_outputs = []
        handles = [
            layer.register_forward_hook(
                lambda m, i, o, kept=layer_outputs: kept.append(o[0] if isinstance(o, tuple) else o)
            )
            for layer in hf.model.layers
        ]
        with torch.no_grad():
            hidden = hf(ids, output_hidden_states=True).hidden_states
        for h in handles:
            h.remove()
        # hidden_states[l + 1] is block l's output, except the last, which HF returns after the final norm.
        for layer in range(len(hf.model.layers) - 1):
            assert torch.equal(hidden[layer + 1], layer_outputs[layer])
        outs.append(torch.stack([o[0] for o in layer_outputs]))  # [layer, seq, d_model]
    return outs


def test_residuals_equal_hf_hidden_states(tiny_model_dir):
    model = load_model(tiny_model_dir)
    data = prompts()
    config = CaptureConfig(positions=Positions.last_k(3), batch_size=4)
    acts = capture(model, data, config, cache_dir=None, progress=False)
    assert acts.tensor.shape == (len(data), model.n_layers, 3, model.d_model)
    texts = config.chat.render_all(model.tokenizer, data.instructions)
    for i, ref in enumerate(hf_reference(tiny_model_dir, texts, model.tokenizer)):
        torch.testing.assert_close(acts.tensor[i], ref[:, -3:], atol=ATOL, rtol=0)


def test_left_padded_batch_equals_each_prompt_alone(tiny_llama):
    model = load_model(tiny_llama)
    data = prompts(5)
    config = CaptureConfig(positions=Positions.last_k(2), batch_size=5)
    batched = capture(model, data, config, cache_dir=None, progress=False)
    for i in range(len(data)):
        alone = capture(model, data.subset([i]), config, cache_dir=None, progress=False)
        torch.testing.assert_close(batched.tensor[i], alone.tensor[0], atol=ATOL, rtol=0)


def test_instruction_mean_averages_the_instruction_tokens(tiny_llama):
    model = load_model(tiny_llama)
    data = prompts(3)
    hooks = hook_names(model.n_layers, layers=[1])
    mean = capture(
        model,
        data,
        CaptureConfig(hooks=hooks, positions=Positions.mean_over_instruction()),
        cache_dir=None,
        progress=False,
    )
    text = ChatFormat().render(model.tokenizer, data.instructions[0])
    n_tokens = len(model.tokenizer(text, add_special_tokens=False).input_ids)
    every = capture(
        model,
        data.subset([0]),
        CaptureConfig(hooks=hooks, positions=Positions.last_k(n_tokens)),
        cache_dir=None,
        progress=False,
    )
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = text.rfind(data.instructions[0])
    inside = [i for i, (a, b) in enumerate(enc.offset_mapping) if b > start and a < start + len(data.instructions[0])]
    expected = every.tensor[0, 0, inside].mean(0)
    torch.testing.assert_close(mean.tensor[0, 0, 0], expected, atol=ATOL, rtol=0)


def test_bridge_capture_stops_after_the_deepest_block(tiny_llama):
    model = load_model(tiny_llama)
    hooks = hook_names(model.n_layers, "resid_mid", [0]) + hook_names(model.n_layers, "mlp_out", [1])
    _ = model.bridge  # boot first: the bridge wraps the HF modules
    ran = []
    for i, layer in enumerate(decoder_layers(model.bridge.original_model)):  # the bridge runs on a copy
        layer.register_forward_pre_hook(lambda *_, i=i: ran.append(i))
    acts = capture(model, prompts(2), CaptureConfig(hooks=hooks), cache_dir=None, progress=False)
    assert acts.hook_names == list(hooks) and acts.layers == [0, 1]
    assert acts.tensor.abs().sum() > 0
    assert sorted(set(ran)) == [0, 1]  # blocks 2 and 3 never ran


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_component_outputs_of_the_plain_model_equal_the_bridge_hooks(arch, tiny_llama, tiny_qwen):
    """Attention and MLP outputs alone run the plain HF model (no bridge), and are the bridge's
    ``hook_attn_out`` / ``hook_mlp_out``; the block output is their sum plus the block's input."""
    model = load_model(tiny_llama if arch == "llama" else tiny_qwen)
    n = model.n_layers
    parts = hook_names(n, "attn_out") + hook_names(n, "mlp_out") + hook_names(n, "resid_post")
    config = CaptureConfig(hooks=parts, positions=Positions.last_k(3))
    plain = capture(model, prompts(4), config, cache_dir=None, progress=False)
    assert model._bridge is None
    bridged = capture(
        model,
        prompts(4),
        CaptureConfig(hooks=parts + hook_names(n, "resid_pre", [0]), positions=Positions.last_k(3)),
        cache_dir=None,
        progress=False,
    )
    assert model._bridge is not None
    torch.testing.assert_close(plain.tensor, bridged.tensor[:, : len(parts)], atol=ATOL, rtol=1e-5)
    attn, mlp, resid = plain.tensor[:, :n], plain.tensor[:, n : 2 * n], plain.tensor[:, 2 * n :]
    before = torch.cat([bridged.tensor[:, -1:], resid[:, :-1]], dim=1)  # the residual entering each block
    torch.testing.assert_close(before + attn + mlp, resid, atol=ATOL, rtol=1e-5)


def test_save_load_round_trip(tiny_llama, tmp_path):
    model = load_model(tiny_llama)
    acts = capture(model, prompts(3), CaptureConfig(positions=Positions.last_k(2)), cache_dir=None, progress=False)
    acts.save(tmp_path / "acts")
    again = Activations.load(tmp_path / "acts")
    assert torch.equal(acts.tensor, again.tensor)
    assert again.metadata() == acts.metadata()
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folder left behind


def test_cache_hit_does_not_run_the_model(tiny_llama, tmp_path):
    model = load_model(tiny_llama)
    config = CaptureConfig()
    first = capture(model, prompts(3), config, cache_dir=tmp_path, progress=False)
    calls = []
    decoder_layers(model.hf)[0].register_forward_pre_hook(lambda *_: calls.append(1))
    second = capture(model, prompts(3), config, cache_dir=tmp_path, progress=False)
    assert calls == [] and torch.equal(first.tensor, second.tensor)
    capture(model, prompts(4), config, cache_dir=tmp_path, progress=False)  # other prompts: a miss
    assert len(calls) == 2  # the shared prefix once, then the one batch


def test_changed_weights_miss_the_cache(tiny_llama, tmp_path):
    model = load_model(tiny_llama)
    first = capture(model, prompts(2), CaptureConfig(), cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        model.hf.model.layers[0].mlp.down_proj.weight.mul_(2.0)
    second = capture(model.with_hf(model.hf), prompts(2), CaptureConfig(), cache_dir=tmp_path, progress=False)
    assert not torch.equal(first.tensor, second.tensor)


def test_empty_prompt_set_is_a_named_error(tiny_llama):
    model = load_model(tiny_llama)
    empty = PromptSet(name="nothing", instructions=())
    with pytest.raises(EmptyPromptSetError, match="nothing"):
        capture(model, empty, cache_dir=None)


def test_unknown_hook_is_a_named_error(tiny_llama):
    model = load_model(tiny_llama)
    with pytest.raises(UnknownHookError, match="blocks.0.hook_resid_psot"):
        capture(model, prompts(1), CaptureConfig(hooks=("blocks.0.hook_resid_psot",)), cache_dir=None)
    with pytest.raises(UnknownHookError, match="out of range"):
        hook_names(model.n_layers, layers=[model.n_layers])


def test_position_outside_the_prompt_is_a_named_error(tiny_llama):
    model = load_model(tiny_llama)
    with pytest.raises(PositionOutOfRangeError, match="outside prompt 0"):
        capture(model, prompts(1), CaptureConfig(positions=Positions((-10_000,))), cache_dir=None)


def test_residual_capture_runs_the_plain_model_and_equals_the_bridge(tiny_llama):
    """Residual hooks alone run the plain HF model (no bridge booted); with one more hook the bridge runs,
    and the residual stream it reads is the same."""
    model = load_model(tiny_llama)
    resid = hook_names(model.n_layers)
    plain = capture(model, prompts(3), CaptureConfig(hooks=resid), cache_dir=None, progress=False)
    assert model._bridge is None
    mixed = capture(
        model,
        prompts(3),
        CaptureConfig(hooks=resid + hook_names(model.n_layers, "resid_pre", [0])),
        cache_dir=None,
        progress=False,
    )
    assert model._bridge is not None
    torch.testing.assert_close(plain.tensor, mixed.tensor[:, : len(resid)], atol=1e-5, rtol=1e-5)
