"""The published weight-space methods (``interp.training.peers``, ``safe_lora`` and ``antidote``) against planted
ground truth, on tiny models.

Planted weights are dyadic (multiples of 2^-12, small), so sums of them are exact in float32 and the arithmetic
methods can be checked bit for bit.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from interp.core.models import LINEAR_MODULES, LoadedModel, load_model, model_fingerprint
from interp.core.prompts import harmful_prompts
from interp.errors import ConfigError
from interp.training.antidote import antidote, calibration_ids, input_norms
from interp.training.peers import interpolate, resta, weight_deltas
from interp.training.safe_lora import (
    alignment_factor,
    alignment_projection,
    cosine_layer_map,
    projected_cosine,
    safe_lora,
    safe_lora_cosines,
)

GRID = 2.0**-12
N_LAYERS = 4  # conftest's tiny models
KEYS = [(layer, module) for layer in range(N_LAYERS) for module in LINEAR_MODULES]


# ----------------------------------------------------------------------------- planting
def linear(model: LoadedModel, key) -> torch.nn.Linear:
    layer, module = key
    part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return model.hf.get_submodule(f"model.layers.{layer}.{part}.{module}")


def weight(model: LoadedModel, key) -> torch.Tensor:
    return linear(model, key).weight.detach().clone()


def dyadic_model(folder) -> LoadedModel:
    """The tiny model with every block linear weight rounded to the grid."""
    model = load_model(folder)
    with torch.no_grad():
        for key in KEYS:
            w = linear(model, key).weight
            w.copy_(torch.round(w / GRID) * GRID)
    return model.with_hf(model.hf)


def plus(model: LoadedModel, deltas: dict) -> LoadedModel:
    """A copy of ``model`` with ``deltas`` added to its block linear weights."""
    out = model.with_hf(copy.deepcopy(model.hf))
    with torch.no_grad():
        for key, delta in deltas.items():
            linear(out, key).weight.add_(delta)
    return out.with_hf(out.hf)


def dyadic_deltas(model: LoadedModel, seed: int, keys=KEYS, steps: int = 8) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randint(-steps, steps + 1, weight(model, key).shape, generator=generator) * GRID for key in keys}


@pytest.fixture()
def triple(tiny_llama):
    """``(unaligned, aligned, finetuned, safety, task)``: aligned = unaligned + safety, finetuned = aligned + task."""
    unaligned = dyadic_model(tiny_llama)
    safety, task = dyadic_deltas(unaligned, seed=1), dyadic_deltas(unaligned, seed=2)
    aligned = plus(unaligned, safety)
    return unaligned, aligned, plus(aligned, task), safety, task


def fingerprints(*models: LoadedModel) -> list[str]:
    return [model_fingerprint(m.hf) for m in models]  # computed afresh (``LoadedModel.fingerprint`` is cached)


def other_parameters(model: LoadedModel) -> dict[str, torch.Tensor]:
    linear_names = {f"{n}.weight" for n, m in model.hf.named_modules() if isinstance(m, torch.nn.Linear)}
    return {n: p for n, p in model.hf.state_dict().items() if n not in linear_names or "layers" not in n}


# ----------------------------------------------------------------------------- weight_deltas
def test_weight_deltas_zero_against_itself_and_recover_a_planted_perturbation(tiny_llama):
    model = dyadic_model(tiny_llama)
    same = weight_deltas(model, model)
    assert sorted(same) == sorted(KEYS)
    assert all(torch.count_nonzero(d) == 0 for d in same.values())
    planted = dyadic_deltas(model, seed=5, keys=[(0, "q_proj"), (2, "down_proj"), (3, "k_proj")])
    deltas = weight_deltas(plus(model, planted), model)
    for key in KEYS:
        expected = planted.get(key, torch.zeros_like(deltas[key]))
        assert deltas[key].shape == weight(model, key).shape
        assert torch.equal(deltas[key], expected), key


# ----------------------------------------------------------------------------- RESTA and interpolation
def test_resta_adds_the_safety_vector_back_exactly(triple):
    unaligned, aligned, finetuned, safety, task = triple
    before = fingerprints(unaligned, aligned, finetuned)
    restored = resta(finetuned, aligned, unaligned, beta=1.0)
    for key in KEYS:
        assert torch.equal(weight(restored, key), weight(finetuned, key) + safety[key]), key
    kept = other_parameters(finetuned)
    assert all(torch.equal(p, kept[n]) for n, p in other_parameters(restored).items())
    untouched = resta(finetuned, aligned, unaligned, beta=0.0)
    assert fingerprints(untouched) == fingerprints(finetuned)
    half = resta(finetuned, aligned, unaligned, beta=0.5)
    assert torch.equal(weight(half, (1, "up_proj")), weight(finetuned, (1, "up_proj")) + 0.5 * safety[(1, "up_proj")])
    assert fingerprints(unaligned, aligned, finetuned) == before  # inputs unchanged


def test_resta_dare_is_plain_resta_at_p0_seeded_and_unbiased(tiny_llama):
    unaligned = dyadic_model(tiny_llama)
    safety = dyadic_deltas(unaligned, seed=1)
    aligned = plus(unaligned, safety)
    c = 2.0**-8
    task = {key: torch.full_like(weight(aligned, key), c) for key in KEYS}  # a constant task update
    finetuned = plus(aligned, task)

    plain = resta(finetuned, aligned, unaligned, beta=1.0)
    assert fingerprints(resta(finetuned, aligned, unaligned, beta=1.0, dare=0.0)) == fingerprints(plain)

    first = resta(finetuned, aligned, unaligned, beta=0.0, dare=0.5, seed=3)
    again = resta(finetuned, aligned, unaligned, beta=0.0, dare=0.5, seed=3)
    other = resta(finetuned, aligned, unaligned, beta=0.0, dare=0.5, seed=4)
    assert fingerprints(first) == fingerprints(again)
    assert fingerprints(first) != fingerprints(other)

    # beta = 0: the result is the aligned model plus the DARE'd update, each element 0 or c / (1 - p) = 2c
    kept = torch.cat([(weight(first, key) - weight(aligned, key)).reshape(-1) for key in KEYS])
    assert set(kept.unique().tolist()) == {0.0, 2 * c}
    assert abs(float((kept == 0).float().mean()) - 0.5) < 0.01
    assert abs(float(kept.mean()) / c - 1.0) < 0.02  # the expectation is kept
    sparse = resta(finetuned, aligned, unaligned, beta=0.0, dare=0.8, seed=0)
    kept = torch.cat([(weight(sparse, key) - weight(aligned, key)).reshape(-1) for key in KEYS])
    assert abs(float((kept == 0).float().mean()) - 0.8) < 0.01
    assert abs(float(kept.mean()) / c - 1.0) < 0.03
    with pytest.raises(ConfigError):
        resta(finetuned, aligned, unaligned, beta=1.0, dare=1.0)


def test_interpolate_runs_from_the_finetuned_to_the_aligned_model(triple):
    _, aligned, finetuned, _, task = triple
    assert fingerprints(interpolate(finetuned, aligned, 0.0)) == fingerprints(finetuned)
    assert fingerprints(interpolate(finetuned, aligned, 1.0)) == fingerprints(aligned)
    middle = interpolate(finetuned, aligned, 0.5)
    for key in KEYS:
        assert torch.equal(weight(middle, key), weight(aligned, key) + 0.5 * task[key]), key
    with pytest.raises(ConfigError):
        interpolate(finetuned, aligned, 1.5)


# ----------------------------------------------------------------------------- Safe LoRA
def orthonormal(d: int, seed: int) -> torch.Tensor:
    """A random orthonormal basis of R^d, ``[d, d]`` float64 (its columns)."""
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def test_exact_projection_is_idempotent_and_the_released_one_is_not():
    generator = torch.Generator().manual_seed(0)
    for v in (
        torch.randn(48, 20, generator=generator, dtype=torch.float64),  # full column rank
        torch.randn(48, 3, generator=generator, dtype=torch.float64) @ torch.randn(3, 20, dtype=torch.float64),
        torch.randn(20, 48, generator=generator, dtype=torch.float64),  # wide: rank = d_out, P = identity
    ):
        exact = alignment_projection(v, "exact", noise=1e-9)
        assert torch.allclose(exact @ exact, exact, atol=1e-10)
        assert torch.allclose(exact @ v, v, atol=1e-10)  # V's columns are fixed points
        released = alignment_projection(v, "released")
        assert torch.allclose(released, v @ v.T / torch.linalg.matrix_norm(v))
        assert not torch.allclose(released @ released, released, atol=1e-3)
    # the released C is a projector only when V's k nonzero singular values all equal sqrt(k)
    u, r = orthonormal(48, 1)[:, :4], orthonormal(20, 2)[:, :4]
    v = 2.0 * u @ r.T
    released = alignment_projection(v, "released")
    assert torch.allclose(released @ released, released, atol=1e-10)
    assert torch.allclose(released, u @ u.T, atol=1e-10)
    assert torch.count_nonzero(alignment_projection(torch.zeros(8, 5), "released")) == 0
    assert torch.count_nonzero(alignment_projection(torch.zeros(8, 5), "exact")) == 0
    graded = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ r.T
    assert torch.allclose(alignment_projection(graded, "exact", rank=2), u[:, :2] @ u[:, :2].T, atol=1e-10)


def test_cosine_is_one_inside_the_alignment_subspace_and_zero_orthogonal_to_it():
    basis, right = orthonormal(32, 3), orthonormal(64, 4)
    v = 0.05 * basis[:, :2] @ right[:, :2].T  # rank 2, equal singular values
    generator = torch.Generator().manual_seed(5)
    inside = basis[:, :2] @ torch.randn(2, 64, generator=generator, dtype=torch.float64)
    outside = basis[:, 2:5] @ torch.randn(3, 64, generator=generator, dtype=torch.float64)
    for projection in ("released", "exact"):
        a = alignment_factor(v, projection, noise=1e-12)
        assert projected_cosine(a, inside) == pytest.approx(1.0, abs=1e-9)
        assert projected_cosine(a, outside) == pytest.approx(0.0, abs=1e-9)
        assert projected_cosine(a, torch.zeros(32, 64)) == 1.0  # nothing to project
        assert projected_cosine(alignment_factor(torch.zeros(32, 64), projection), inside) == 0.0  # C = 0
    # V with unequal singular values: the exact projector still sees an update in its span as cosine 1
    v = basis[:, :2] @ torch.diag(torch.tensor([1.0, 0.01], dtype=torch.float64)) @ right[:, :2].T
    mixed = basis[:, :2] @ torch.tensor([[1.0], [1.0]], dtype=torch.float64) @ right[:, :1].T
    assert projected_cosine(alignment_factor(v, "exact", noise=1e-12), mixed) == pytest.approx(1.0, abs=1e-9)
    assert projected_cosine(alignment_factor(v, "released"), mixed) < 0.75


ORTHOGONAL = (2, "v_proj")  # the module whose task update is planted orthogonal to the alignment subspace


@pytest.fixture()
def subspace_triple(tiny_llama):
    """Every module's safety delta spans 2 directions (equal singular values); every task update lies in that span
    except ``ORTHOGONAL``'s, which is orthogonal to it."""
    unaligned = dyadic_model(tiny_llama)
    generator = torch.Generator().manual_seed(7)
    safety, task = {}, {}
    for i, key in enumerate(KEYS):
        d_out, d_in = weight(unaligned, key).shape
        basis, right = orthonormal(d_out, 100 + i), orthonormal(d_in, 200 + i)
        safety[key] = (0.05 * basis[:, :2] @ right[:, :2].T).float()
        directions = basis[:, 2:4] if key == ORTHOGONAL else basis[:, :2]
        task[key] = (0.02 * directions @ torch.randn(2, d_in, generator=generator, dtype=torch.float64)).float()
    aligned = plus(unaligned, safety)
    return unaligned, aligned, plus(aligned, task)


@pytest.mark.parametrize("projection", ["released", "exact"])
def test_safe_lora_projects_the_module_whose_update_leaves_the_alignment_subspace(subspace_triple, projection):
    unaligned, aligned, finetuned = subspace_triple
    before = fingerprints(unaligned, aligned, finetuned)
    result = safe_lora(finetuned, aligned, unaligned, projection=projection, n_modules=1)
    assert result.projected == (ORTHOGONAL,)
    assert result.cosines[ORTHOGONAL] == pytest.approx(0.0, abs=1e-5)
    assert all(result.cosines[key] > 0.9999 for key in KEYS if key != ORTHOGONAL)
    assert result.threshold == result.cosines[ORTHOGONAL]
    # the projected module: W_aligned + C dW, and C dW = 0 here; every other module keeps the fine-tuned weight
    assert torch.allclose(weight(result.model, ORTHOGONAL), weight(aligned, ORTHOGONAL), atol=1e-7)
    assert not torch.allclose(weight(finetuned, ORTHOGONAL), weight(aligned, ORTHOGONAL), atol=1e-3)
    for key in KEYS:
        if key != ORTHOGONAL:
            assert torch.equal(weight(result.model, key), weight(finetuned, key)), key
    assert fingerprints(unaligned, aligned, finetuned) == before  # inputs unchanged

    by_threshold = safe_lora(finetuned, aligned, unaligned, projection=projection, select="threshold", threshold=0.5)
    assert by_threshold.projected == (ORTHOGONAL,)
    assert fingerprints(by_threshold.model) == fingerprints(result.model)
    several = safe_lora(finetuned, aligned, unaligned, projection=projection, n_modules=3)
    assert len(several.projected) == 3 and several.projected[0] == ORTHOGONAL
    assert safe_lora(finetuned, aligned, unaligned, projection=projection, n_modules=0).projected == ()

    layers = result.layer_map()
    assert layers.shape == (N_LAYERS,)
    assert int(np.argmin(layers)) == ORTHOGONAL[0]
    assert layers[ORTHOGONAL[0]] == pytest.approx(6 / 7, abs=1e-4)  # six modules at 1, one at 0
    assert safe_lora_cosines(finetuned, aligned, unaligned, projection) == result.cosines  # no model made


def test_the_released_projection_shrinks_an_update_in_the_span(subspace_triple):
    """The released C keeps the direction (cosine 1) and scales the update by s^2 / ||s|| = 0.05 / sqrt(2)."""
    unaligned, aligned, finetuned = subspace_triple
    key = (0, "q_proj")
    result = safe_lora(finetuned, aligned, unaligned, projection="released", select="threshold", threshold=1.5)
    assert len(result.projected) == len(KEYS)
    update = weight(result.model, key) - weight(aligned, key)
    expected = (0.05 / np.sqrt(2)) * (weight(finetuned, key) - weight(aligned, key))
    assert torch.allclose(update, expected, atol=1e-7)
    exact = safe_lora(finetuned, aligned, unaligned, projection="exact", select="threshold", threshold=1.5)
    assert torch.allclose(weight(exact.model, key), weight(finetuned, key), atol=1e-7)


def test_cosine_layer_map_means_over_modules():
    cosines = {(0, "q_proj"): 1.0, (0, "k_proj"): 0.5, (2, "q_proj"): 0.25}
    layers = cosine_layer_map(cosines, n_layers=4)
    assert layers[0] == 0.75 and layers[2] == 0.25
    assert np.isnan(layers[1]) and np.isnan(layers[3])
    assert cosine_layer_map(cosines).shape == (3,)


# ----------------------------------------------------------------------------- Antidote
PLANTED_COLUMNS = (3, 17, 40)


@pytest.fixture()
def loud_columns(tiny_llama) -> LoadedModel:
    """Block 0's attention input has three loud columns (its norm weight 100 there), and q/k/v weigh them by +-0.05.
    The pad token gets a nonzero embedding: Hugging Face initialises it to zero, and a zero padding embedding stays
    zero through every block, which would hide padding from the input norms."""
    model = load_model(tiny_llama)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        embed = model.hf.model.embed_tokens.weight
        embed[model.tokenizer.pad_token_id] = 0.02 * torch.randn(embed.shape[1], generator=generator)
        model.hf.model.layers[0].input_layernorm.weight[list(PLANTED_COLUMNS)] = 100.0
        for module in ("q_proj", "k_proj", "v_proj"):
            w = linear(model, (0, module)).weight
            signs = torch.randint(0, 2, (w.shape[0], len(PLANTED_COLUMNS)), generator=generator) * 2 - 1
            w[:, list(PLANTED_COLUMNS)] = 0.05 * signs.float()
    return model.with_hf(model.hf)


def test_input_norms_are_the_column_norms_of_the_inputs_and_ignore_padding(loud_columns):
    model = loud_columns
    prompts = harmful_prompts("train").head(5)
    ids = calibration_ids(model, prompts)
    assert len({len(s) for s in ids}) > 1  # batches need padding
    batched = input_norms(model, ids, batch_size=5)
    single = input_norms(model, ids, batch_size=1)
    for key in batched:
        assert torch.allclose(batched[key], single[key], rtol=1e-4), key
    # block 0's q_proj input is input_layernorm of the embeddings: its column norms over every prompt token
    with torch.no_grad():
        norm = model.hf.model.layers[0].input_layernorm
        x = torch.cat([norm(model.hf.model.embed_tokens(torch.tensor([s])))[0] for s in ids])  # [tokens, d_model]
    assert torch.allclose(batched[(0, "q_proj")], x.norm(dim=0), rtol=1e-4)
    assert torch.equal(batched[(0, "q_proj")], batched[(0, "k_proj")])
    assert set(torch.topk(batched[(0, "q_proj")], 3).indices.tolist()) == set(PLANTED_COLUMNS)


@pytest.mark.parametrize("per", ["row", "module"])
def test_antidote_zeroes_exactly_the_weights_on_the_loud_columns(loud_columns, per):
    model = loud_columns
    before = fingerprints(model)
    prompts = harmful_prompts("train").head(6)
    pruned = antidote(model, prompts, fraction=3 / 64, per=per, batch_size=4)
    for module in ("q_proj", "k_proj", "v_proj"):
        key = (0, module)
        old, new = weight(model, key), weight(pruned, key)
        zeroed = (new == 0) & (old != 0)
        assert sorted(set(zeroed.nonzero()[:, 1].tolist())) == list(PLANTED_COLUMNS), module
        assert bool(zeroed[:, list(PLANTED_COLUMNS)].all()), module
        assert torch.equal(new[~zeroed], old[~zeroed])
    assert fingerprints(model) == before  # the input is unchanged
    # answers extend the calibration tokens; modules narrows what is pruned
    answers = ["Sure, here is how."] * len(prompts)
    with_answers, bare = calibration_ids(model, prompts, answers), calibration_ids(model, prompts)
    assert all(a[: len(b)] == b and len(a) > len(b) for a, b in zip(with_answers, bare))
    only_q = antidote(model, prompts, fraction=3 / 64, per=per, answers=answers, modules=("q_proj",))
    assert torch.equal(weight(only_q, (0, "k_proj")), weight(model, (0, "k_proj")))
    assert int((weight(only_q, (0, "q_proj")) == 0).sum()) >= 3 * 64


def test_antidote_fraction_zero_changes_nothing_and_bad_settings_are_refused(loud_columns):
    prompts = harmful_prompts("train").head(2)
    assert fingerprints(antidote(loud_columns, prompts, fraction=0.0)) == fingerprints(loud_columns)
    with pytest.raises(ConfigError):
        antidote(loud_columns, prompts, fraction=1.0)
    with pytest.raises(ConfigError):
        antidote(loud_columns, [], fraction=0.1)
    with pytest.raises(ConfigError):
        antidote(loud_columns, prompts, fraction=0.1, per="layer")


def test_antidote_on_the_task_update_prunes_only_where_the_update_is(loud_columns):
    """With the aligned model given, only the fine-tune's update is scored: a planted update on three columns
    of block 1's o_proj is what gets pruned (back to the aligned weights), and weights the fine-tune did not
    touch never change, however loud their inputs."""
    aligned = loud_columns
    finetuned = aligned.with_hf(copy.deepcopy(aligned.hf))
    key, columns = (1, "o_proj"), [5, 9, 30]
    with torch.no_grad():
        linear(finetuned, key).weight[:, columns] += 0.5
    prompts = harmful_prompts("train").head(6)
    d_in = linear(finetuned, key).weight.shape[1]
    pruned = antidote(finetuned, prompts, fraction=len(columns) / d_in, aligned=aligned, batch_size=4)
    restored = weight(pruned, key)
    assert torch.equal(restored, weight(aligned, key))  # every planted entry is back to its aligned value
    for other in KEYS:
        if other != key:  # untouched by the fine-tune: untouched by pruning (the loud block-0 columns included)
            assert torch.equal(weight(pruned, other), weight(finetuned, other)), other
