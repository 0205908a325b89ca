"""Measures per post-instruction position and the direction selection over (layer, position).

Planted ground truth: a fine-tuned model whose attention in one block stops writing the base refusal
direction at one token position only. The per-position measures must find that position (and nothing
before it), and the selection's interventions must equal the same edits as hooks on a full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.core.bridge import add_vector, block_outputs, component, intervene, last_logits
from interp.core.chat import ChatFormat, pad_batch
from interp.core.judge import refusal_log_odds
from interp.core.models import ModelPair, load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.measures.capture import CaptureConfig, Positions, capture
from interp.measures.directions import DiffInMeans
from interp.measures.positions import (
    KL_BOUNDS,
    DirectionSelection,
    ablated_everywhere,
    position_metrics,
    position_tokens,
    select,
    select_direction,
)

PLANTED, AT = 2, -3  # the block whose attention output is edited, and the position (from the end)
LABELS = ["-5", "-4", "-3", "-2", "-1"]
SETS = {
    "harmful": lambda: harmful_prompts("all"),
    "harmless": lambda: harmless_prompts("all"),
    "task": lambda: arithmetic_prompts("train", n=40),
}


def planted_pair(model_dir) -> ModelPair:
    """Base: the tiny model with block PLANTED's attention writes amplified. Fine-tuned: the same weights,
    with the base's refusal direction at that block removed from the attention output at position AT."""
    base, finetuned = load_model(model_dir), load_model(model_dir)
    for model in (base, finetuned):
        with torch.no_grad():
            component(model.hf, PLANTED, "attn_out").o_proj.weight.mul_(6.0)
    base, finetuned = base.with_hf(base.hf), finetuned.with_hf(finetuned.hf)
    data = SETS["harmful"]() + SETS["harmless"]()
    acts = capture(base, data, CaptureConfig(), cache_dir=None, progress=False).tensor[:, :, -1]
    u = torch.tensor(DiffInMeans().fit(acts, np.array(data.labels)).directions_[PLANTED], dtype=torch.float32)

    # Capture runs the system turn shared by every prompt once (no attention mask), then the rest of each
    # prompt, left padded, so that position AT is the same token in every row: edit only the latter.
    call = {"rest": False}

    def which_call(module, args, kwargs):
        call["rest"] = kwargs.get("attention_mask") is not None

    def remove_at_position(module, args, output):
        if not call["rest"]:
            return output
        hidden = output[0].clone()  # [batch, seq, d_model]
        hidden[:, AT] -= (hidden[:, AT] @ u)[:, None] * u
        return (hidden, *output[1:])

    finetuned.hf.register_forward_pre_hook(which_call, with_kwargs=True)
    component(finetuned.hf, PLANTED, "attn_out").register_forward_hook(remove_at_position)
    return ModelPair(base, finetuned)


@pytest.fixture(scope="module")
def measured(tiny_llama):
    pair = planted_pair(tiny_llama)
    config = CaptureConfig(positions=Positions.last_k(5))
    acts = {
        f"{role}_{kind}": capture(model, prompts(), config, cache_dir=None, progress=False).tensor.numpy()
        for role, model in (("base", pair.base), ("ft", pair.finetuned))
        for kind, prompts in SETS.items()
    }
    tokens = position_tokens(pair.base, ChatFormat(), 5)
    return pair, acts, position_metrics(acts, LABELS, tokens)


def test_suppression_is_found_at_the_planted_position_and_block(measured):
    _, _, positions = measured
    lost = positions.grid("separation_base") - positions.grid("separation_finetuned")  # [position, layer]
    planted = LABELS.index(str(AT))
    np.testing.assert_allclose(lost[:, :PLANTED], 0.0, atol=1e-4)  # below the block: nothing changed
    np.testing.assert_allclose(lost[:planted], 0.0, atol=1e-4)  # earlier tokens never see the edit
    assert int(np.argmax(lost[:, PLANTED])) == planted  # at the block, only the planted position lost it
    np.testing.assert_allclose(np.delete(lost[:, PLANTED], planted), 0.0, atol=1e-4)
    assert lost[planted, PLANTED] > 0.5 * positions.grid("separation_base")[planted, PLANTED]
    assert positions.last is positions.metrics[-1] and positions.tokens[-1] == "\n"


def test_position_metrics_round_trip(measured):
    _, _, positions = measured
    again = type(positions).from_dict(positions.to_dict())
    np.testing.assert_allclose(again.grid("retention"), positions.grid("retention"))
    assert again.tokens == positions.tokens


def test_ablation_everywhere_leaves_no_component_along_the_direction(tiny_llama):
    model = load_model(tiny_llama)
    batch = pad_batch(ChatFormat().encode(model.tokenizer, ["hi there", "how are you"]), model.tokenizer.pad_token_id)
    unit = torch.nn.functional.normalize(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    seen = []
    with torch.no_grad(), ablated_everywhere(model.hf, unit):
        outputs = block_outputs(model.hf, batch.to("cpu"), list(range(model.n_layers)))
        handle = model.hf.model.layers[0].register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
        )
        last_logits(model.hf, batch.to("cpu"))
        handle.remove()
    for output in [seen[0], *outputs]:  # the embeddings entering block 0, then every block's output
        assert (output @ unit).abs().max() < 1e-5
    plain = block_outputs(model.hf, batch.to("cpu"), [0])[0]
    assert (plain @ unit).abs().max() > 1e-3  # the hooks are gone


def test_selection_scores_equal_the_same_edits_on_full_forwards(tiny_llama):
    """``induce`` resumes after block l and ``bypass``/``kl`` share the system turn's keys and values; the
    same edits as hooks on full forwards of each prompt alone give the same scores."""
    model = load_model(tiny_llama)
    harmful, harmless = harmful_prompts("val").head(3), harmless_prompts("val").head(3)
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(2, model.n_layers, model.d_model, generator=generator).numpy()
    token = [5]
    selection = select_direction(
        model, vectors, ["-2", "-1"], harmful, harmless, token, batch_size=2, score_all=True, progress=False
    )
    assert selection.max_layer == 3 and np.isnan(selection.induce[:, 3:]).all()

    def scores(prompts, edits=None, ablate=None) -> torch.Tensor:
        out = []
        for seq in ChatFormat().encode(model.tokenizer, prompts.instructions):
            batch = pad_batch([seq], model.tokenizer.pad_token_id).to("cpu")
            with torch.no_grad(), intervene(model.hf, edits or {}):
                if ablate is None:
                    out.append(torch.log_softmax(last_logits(model.hf, batch), -1))
                else:
                    with ablated_everywhere(model.hf, ablate):
                        out.append(torch.log_softmax(last_logits(model.hf, batch), -1))
        return torch.cat(out)

    plain_harmless = scores(harmless)
    for p, layer in ((0, 0), (1, 2)):
        vector = torch.tensor(vectors[p, layer])
        added = scores(harmless, {layer: add_vector(vector)})
        assert selection.induce[p, layer] == pytest.approx(float(refusal_log_odds(added, token).mean()), abs=1e-4)
        unit = vector / vector.norm()
        ablated = scores(harmful, ablate=unit)
        assert selection.bypass[p, layer] == pytest.approx(float(refusal_log_odds(ablated, token).mean()), abs=1e-4)
        gentle = scores(harmless, ablate=unit)
        kl = (plain_harmless.exp() * (plain_harmless - gentle)).sum(-1).mean()
        assert selection.kl[p, layer] == pytest.approx(float(kl), abs=1e-4)
    again = DirectionSelection.from_dict(selection.to_dict())
    assert again.to_dict() == selection.to_dict()
    assert selection.selected_layer is None and again.vector is None  # random vectors induce no refusal
    with pytest.raises(ConfigError, match="0.8"):
        select_direction(model, vectors, ["-2", "-1"], harmful, harmless, token, layers=[3], progress=False)


def test_the_selected_candidate_is_the_steering_vector(tiny_llama):
    """Planted: the refusal tokens are the first half of the vocabulary and one candidate, (position -1,
    layer 1), points from the other half's mean unembedding to theirs; the rest are small noise. Ablating
    the planted one removes the most refusal (lowest bypass), so it is selected and its vector kept."""
    model = load_model(tiny_llama)
    harmful, harmless = harmful_prompts("val").head(3), harmless_prompts("val").head(3)
    vectors = 1e-3 * torch.randn(2, model.n_layers, model.d_model, generator=torch.Generator().manual_seed(1))
    unembed = model.hf.get_output_embeddings().weight.detach()
    half = unembed.shape[0] // 2
    direction = unembed[:half].mean(0) - unembed[half:].mean(0)
    vectors[1, 1] = 20 * direction / direction.norm()
    tokens = list(range(half))
    selection = select_direction(model, vectors.numpy(), ["-2", "-1"], harmful, harmless, tokens, progress=False)
    assert (selection.selected_position, selection.selected_layer) == ("-1", 1)
    assert selection.bypass[1, 1] == np.nanmin(selection.bypass)
    np.testing.assert_array_equal(selection.vector, vectors[1, 1].numpy())
    np.testing.assert_array_equal(DirectionSelection.from_dict(selection.to_dict()).vector, selection.vector)


def test_the_filter_and_the_choice():
    """Planted scores: the lowest bypass among candidates with induce > 0 and KL under the first bound
    that keeps any; a candidate failing either filter is never chosen, however low its bypass."""
    nan = np.nan
    bypass = np.array([[-9.0, -1.0, 0.5, nan], [-2.0, -0.5, -8.0, nan]])
    induce = np.array([[1.0, 0.2, 0.3, nan], [0.4, 0.1, -0.2, nan]])  # (1, 2) fails induce
    kl = np.array([[0.9, 0.05, 0.02, nan], [0.15, 0.08, 0.01, nan]])  # (0, 0) fails every KL bound but 1.0
    scores = dict(score_harmful=1.0, score_harmless=-2.0, max_layer=3, n_harmful=4, n_harmless=4)
    chosen = select(["-2", "-1"], bypass, induce, kl, **scores)
    assert (chosen.selected_layer, chosen.selected_position, chosen.kl_max) == (1, "-2", KL_BOUNDS[0])
    assert chosen.scores_of_selected() == {"layer": 1, "position": "-2", "bypass": -1.0, "induce": 0.2, "kl": 0.05}
    # Nothing under 0.1: the bound rises to 0.2, where (1, 0) is kept.
    relaxed = select(["-2", "-1"], bypass, induce, kl + np.array([[0, 0.1, 0.1, 0], [0, 0.1, 0, 0]]), **scores)
    assert (relaxed.selected_layer, relaxed.selected_position, relaxed.kl_max) == (0, "-1", 0.2)
    nothing = select(["-2", "-1"], bypass, -np.abs(induce), kl, **scores)
    assert nothing.selected_layer is None and nothing.scores_of_selected() is None
