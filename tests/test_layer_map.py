"""Layer maps: JSON round trip, named errors for malformed maps, peft config on the mapped layers only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
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


# ----------------------------------------------------------------------------- version 2: modules per layer
def test_a_version_1_map_loads_and_is_saved_as_version_2(tmp_path):
    v1 = {k: v for k, v in make_map().to_dict().items() if k != "entries"} | {"version": 1}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    loaded = LayerMap.load(tmp_path / "v1.json")
    assert loaded.version == 2 and loaded.modules == {1: list(loaded.target_modules), 4: list(loaded.target_modules)}
    loaded.save(tmp_path / "v2.json")
    saved = json.loads((tmp_path / "v2.json").read_text())
    assert saved["version"] == 2 and saved["entries"][0] == {"layer": 1, "modules": list(loaded.target_modules)}
    assert LayerMap.load(tmp_path / "v2.json") == loaded
    with pytest.raises(LayerMapError, match="version 1 layer map has no entries"):
        LayerMap.from_dict(v1 | {"entries": saved["entries"]})


def test_a_version_2_map_round_trips_with_modules_per_layer(tmp_path):
    entries = [{"layer": 1, "modules": ["o_proj"]}, {"layer": 4, "modules": ["down_proj", "up_proj"]}]
    layer_map = make_map(entries=entries)
    layer_map.save(tmp_path / "map.json")
    assert LayerMap.load(tmp_path / "map.json") == layer_map
    assert layer_map.modules == {1: ["o_proj"], 4: ["down_proj", "up_proj"]}


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"layer": 1, "modules": ["o_proj"]}], r"entries name layers \[1\], but the selected layers are \[1, 4\]"),
        ([{"layer": 1, "modules": ["o_proj"]}, {"layer": 3, "modules": ["o_proj"]}], "selected layers"),
        ([{"layer": 1, "modules": []}, {"layer": 4, "modules": ["o_proj"]}], "non-empty list"),
        ([{"layer": 1, "modules": ["attn"]}, {"layer": 4, "modules": ["o_proj"]}], r"\['attn'\] not in target_modules"),
        ([{"layer": 1}, {"layer": 4, "modules": ["o_proj"]}], "exactly 'layer' and 'modules'"),
        ([], "non-empty list"),
    ],
)
def test_malformed_entries_are_named(entries, message):
    with pytest.raises(LayerMapError, match=message):
        make_map(entries=entries)


def test_lora_goes_on_the_named_modules_only(tiny_llama):
    from peft import get_peft_model

    from interp.core.models import load_model

    model = load_model(tiny_llama)
    n = model.n_layers
    entries = [{"layer": 1, "modules": ["o_proj"]}, {"layer": 2, "modules": ["down_proj", "gate_proj"]}]
    layer_map = make_map(
        n_layers=n,
        scores=[0.0] * n,
        ranked_layers=list(range(n)),
        selected_layers=[1, 2],
        alignment_layers=[1, 2, n - 1],
        metrics={},
        entries=entries,
    )
    adapted = get_peft_model(model.hf, layer_map.to_lora_config())
    places = sorted({name.split(".lora_A")[0] for name, _ in adapted.named_parameters() if ".lora_A" in name})
    assert places == [
        "base_model.model.model.layers.1.self_attn.o_proj",
        "base_model.model.model.layers.2.mlp.down_proj",
        "base_model.model.model.layers.2.mlp.gate_proj",
    ]
    whole = get_peft_model(load_model(tiny_llama).hf, layer_map.to_lora_config(layers=[3]))
    blocks = {name.split(".")[4] for name, _ in whole.named_parameters() if ".lora_A" in name}
    assert blocks == {"3"}  # with layers: every target module of those blocks, as the baselines use


def test_a_map_reranked_by_other_scores_selects_their_top_k_and_aligns_there():
    layer_map = make_map()
    n = layer_map.n_layers
    scores = [0.0] * n
    scores[1], scores[2] = 5.0, 3.0
    scores[0] = float("nan")  # a candidate undefined at a layer ranks it last
    again = layer_map.reranked(scores, "evidence", k=2)
    assert again.selected_layers == [1, 2] and again.ranked_layers[:2] == [1, 2] and again.ranked_layers[-1] == 0
    assert again.alignment_layers == [1, 2, n - 1] and again.score_weights == {"evidence": 1.0}
    assert again.base_fingerprint == layer_map.base_fingerprint and sorted(again.modules) == [1, 2]  # whole blocks
    assert layer_map.reranked(scores, "evidence").selected_layers == sorted(
        again.ranked_layers[: len(layer_map.selected_layers)]
    )
    with pytest.raises(LayerMapError, match="reranked"):
        layer_map.reranked(scores[:-1], "evidence")


def _pair(rng, lost_from: int | None, n_layers: int = 6, d: int = 8, n: int = 40):
    """Harmful prompts sit +2 along axis 0 in the base; the fine-tuned model loses that from ``lost_from``
    on (never, with None); task prompts sit +1 along axis 1 in both. Noise 0.3 everywhere. The causal sweep
    per prompt: patching restores 1 log-odds from ``lost_from`` on, noise 0.3."""
    from interp.measures.causal import CausalSweep
    from interp.measures.compare import PairActivations

    harmful, task, zero = np.zeros((n_layers, d)), np.zeros((n_layers, d)), np.zeros((n_layers, d))
    harmful[:, 0], task[:, 1] = 2.0, 1.0
    ft_harmful, effect = harmful.copy(), np.zeros((32, n_layers))
    if lost_from is not None:
        ft_harmful[lost_from:, 0], effect[:, lost_from:] = 0.0, 1.0
    noisy = lambda shift: shift + 0.3 * rng.standard_normal((n, n_layers, d))  # noqa: E731
    acts = PairActivations(noisy(harmful), noisy(zero), noisy(task), noisy(ft_harmful), noisy(zero), noisy(task))
    by_prompt = effect + 0.3 * rng.standard_normal(effect.shape)
    nan = np.full(n_layers, np.nan)
    return acts, CausalSweep(
        list(range(n_layers)), nan, nan, by_prompt.mean(0), 0.0, 0.0, [1], patch_by_prompt=by_prompt
    )


def test_the_score_spread_is_centred_on_the_maps_own_score():
    """The spread's point estimate is the layer map's score from ``compare`` and the sweep, and its
    interval holds it at every layer."""
    from interp.measures.compare import compare
    from interp.measures.layer_map import layer_scores, score_spread

    acts, sweep = _pair(np.random.default_rng(0), lost_from=3)
    spread = score_spread(acts, sweep, k=2, resamples=400)
    np.testing.assert_allclose(spread.score, layer_scores(compare(acts), sweep), atol=1e-9)
    assert all(lo <= s <= hi for lo, s, hi in zip(spread.low, spread.score, spread.high))
    assert spread.n_prompts == {"harmful": 40, "harmless": 40, "task": 40, "causal": 32}
    assert sum(spread.top_k_share) == pytest.approx(2.0)  # k layers in every resample


def test_a_planted_block_is_in_every_resamples_top_1_and_noise_is_in_no_ones():
    """Planted: block 3 removes the separation and carries the causal effect, so every resample ranks it
    first. Without any planted change the top layer is noise: no layer is first in most resamples."""
    from interp.measures.layer_map import score_spread

    planted = score_spread(*_pair(np.random.default_rng(1), lost_from=3), k=1, resamples=400)
    assert planted.top_k_share[3] >= 0.99 and planted.same_top_k >= 0.99
    assert planted.low[3] > max(planted.high[layer] for layer in (0, 1, 2, 4, 5))
    noise = score_spread(*_pair(np.random.default_rng(2), lost_from=None), k=1, resamples=400)
    assert max(noise.top_k_share) < 0.8 and noise.same_top_k < 0.8


def test_the_score_spread_names_a_bad_k():
    from interp.measures.layer_map import score_spread

    acts, sweep = _pair(np.random.default_rng(3), lost_from=2)
    with pytest.raises(LayerMapError, match="k must be between 1 and 6"):
        score_spread(acts, sweep, k=7)
