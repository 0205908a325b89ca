"""Layer maps: JSON round trip, named errors for malformed maps, peft config on the mapped layers only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interp.errors import LayerMapError
from interp.measures.layer_map import LAYER_MAP_VERSION, LayerMap


def make_map(**changes) -> LayerMap:
    data = dict(
        base_model="base",
        finetuned_model="ft",
        base_fingerprint="b" * 16,
        finetuned_fingerprint="f" * 16,
        n_layers=6,
        scores=[0.1, 0.9, 0.3, 0.0, 0.5, 0.2],
        ranked_layers=[1, 4, 2, 5, 0, 3],
        selected_layers=[1, 4],
        alignment_layers=[1, 4, 5],
        metrics={"suppression": [0.0] * 6},
    )
    data.update(changes)
    return LayerMap(**data)


def test_round_trip(tmp_path):
    layer_map = make_map()
    layer_map.save(tmp_path / "layer_map.json")
    assert LayerMap.load(tmp_path / "layer_map.json") == layer_map
    assert json.loads((tmp_path / "layer_map.json").read_text())["version"] == LAYER_MAP_VERSION


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"version": 99}, "version 99 is not supported"),
        ({"selected_layers": [1, 6]}, r"selected_layers has layers out of range 0..5: \[6\]"),
        ({"alignment_layers": [-1]}, "out of range"),
        ({"ranked_layers": [0, 1, 2, 3, 4, 4]}, "repeats a layer"),
        ({"scores": [0.1] * 5}, "scores must be 6 finite numbers"),
        ({"scores": [float("nan")] * 6}, "scores must be 6 finite numbers"),
        ({"base_model": None}, "base_model must be a string"),
        ({"target_modules": ["q_proj", "mlp.c_fc"]}, r"unknown target modules \['mlp.c_fc'\]"),
        ({"lora_rank": 0}, "lora_rank must be a positive integer"),
        ({"metrics": {"x": [1.0]}}, "metric 'x' must have one number per layer"),
    ],
)
def test_malformed_maps_are_named(changes, message):
    with pytest.raises(LayerMapError, match=message):
        make_map(**changes)


def test_loader_names_file_problems(tmp_path):
    with pytest.raises(LayerMapError, match="not found"):
        LayerMap.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LayerMapError, match="not valid JSON"):
        LayerMap.load(tmp_path / "bad.json")
    data = make_map().to_dict()
    del data["selected_layers"]
    with pytest.raises(LayerMapError, match="missing fields: \\['selected_layers'\\]"):
        LayerMap.from_dict(data)
    with pytest.raises(LayerMapError, match="unknown fields"):
        LayerMap.from_dict(make_map().to_dict() | {"extra": 1})


def test_model_mismatch_is_named():
    layer_map = make_map()
    other = SimpleNamespace(name="other", n_layers=6, fingerprint="x" * 16)
    with pytest.raises(LayerMapError, match="was made for finetuned model"):
        layer_map.check_model(other)
    with pytest.raises(LayerMapError, match="6 layers; short has 4"):
        layer_map.check_model(SimpleNamespace(name="short", n_layers=4, fingerprint="f" * 16))
    layer_map.check_model(SimpleNamespace(name="ft", n_layers=6, fingerprint="f" * 16))


def test_lora_config_touches_only_selected_layers():
    config = make_map().to_lora_config()
    assert list(config.layers_to_transform) == [1, 4] and config.r == 8
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(make_map().to_dict())), json_values, max_size=14), st.booleans())
def test_loader_fuzz_only_raises_layer_map_errors(fields, start_valid):
    data = (make_map().to_dict() | fields) if start_valid else fields
    try:
        LayerMap.from_dict(data)
    except LayerMapError:
        pass
