"""Loading models and pairs from folders, and the named errors for pairs that do not match."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import build_tiny

from interp.core.models import ModelPair, load_model, load_pair
from interp.core.sources import resolve_source
from interp.errors import HubUnavailableError, ModelLoadError, ModelMismatchError


def test_local_folder_loads_with_left_padding(tiny_llama):
    model = load_model(tiny_llama)
    assert model.n_layers == 4 and model.d_model == 64 and len(model.tokenizer) == 300
    assert model.tokenizer.padding_side == "left" and model.tokenizer.pad_token is not None
    assert model.bridge.cfg.d_mlp == 176 and model.bridge.cfg.d_vocab == 300


def test_pair_of_same_architecture_loads(tiny_llama):
    pair = load_pair(tiny_llama, tiny_llama)
    assert pair.n_layers == 4


def test_different_layer_counts_are_named(tiny_llama, tmp_path):
    other = build_tiny(tmp_path / "three", "llama", n_layers=3)
    with pytest.raises(ModelMismatchError, match="number of layers: 4 vs 3"):
        load_pair(tiny_llama, other)


def test_different_vocabularies_are_named(tiny_llama, tmp_path):
    other = build_tiny(tmp_path / "vocab", "llama", vocab_size=320)
    with pytest.raises(ModelMismatchError, match="tokenizer vocabulary size: 300 vs 320"):
        load_pair(tiny_llama, other)


def test_same_size_but_different_tokens_are_named(tiny_llama, tmp_path):
    base = load_model(tiny_llama)
    other = load_model(tiny_llama)
    vocab = other.tokenizer.get_vocab()
    swapped = dict(vocab)
    a, b = list(vocab)[10], list(vocab)[11]
    swapped[a], swapped[b] = vocab[b], vocab[a]
    other.tokenizer.get_vocab = lambda: swapped
    with pytest.raises(ModelMismatchError, match="tokenizer vocabulary"):
        ModelPair(base, other)


def test_different_architectures_are_named(tiny_llama, tiny_qwen):
    with pytest.raises(ModelMismatchError, match="architecture"):
        load_pair(tiny_llama, tiny_qwen)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="not reachable"):
        load_model("some-org/some-model-that-is-not-cached")


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(tmp_path / "nothing.gguf")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(tmp_path)
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_source("./no/such/folder")


def test_fingerprint_tracks_weights_not_where_they_were_saved(tiny_llama, tmp_path):
    model = load_model(tiny_llama)
    before = model.fingerprint
    assert load_model(tiny_llama).fingerprint == before
    shutil.copytree(tiny_llama, tmp_path / "elsewhere")
    assert load_model(tmp_path / "elsewhere").fingerprint == before  # the answer cache is shared across folders
    with torch.no_grad():
        model.hf.model.layers[2].self_attn.o_proj.weight.add_(1e-3)
    assert model.with_hf(model.hf).fingerprint != before


def test_loading_never_trains():
    """``organism:`` names are the organism stage's to resolve; loading one says so instead of training."""
    with pytest.raises(ModelLoadError, match="build_organism"):
        resolve_source("organism:base")


def test_a_device_map_within_max_memory_gives_the_same_model(tiny_llama):
    """``device_map='auto'`` with ``max_memory`` (accelerate's placement; all on the CPU here) loads the
    same weights as a plain load: the same fingerprint and logits."""
    from interp.core.models import parse_max_memory

    plain = load_model(tiny_llama)
    mapped = load_model(tiny_llama, device_map="auto", max_memory=parse_max_memory("cpu=2GiB"))
    assert mapped.fingerprint == plain.fingerprint
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(mapped.hf(input_ids=ids).logits, plain.hf(input_ids=ids).logits)
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
