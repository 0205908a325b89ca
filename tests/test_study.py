"""The restoration study on tiny models: log-odds arithmetic, baseline plans, and a whole study run writing
adapters, a merged model and a report (the evaluation table itself: test_evaluation.py)."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import QUICK_EVAL as QUICK
from conftest import layer_map_for, small_analysis_prompts, tiny_suite
from peft import PeftModel
from safetensors.torch import load_file

from interp.analyze import AnalysisConfig, analyze
from interp.core.judge import refusal_log_odds
from interp.core.models import load_model
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError, EmptyPromptSetError
from interp.evaluation.table import EvalConfig, EvalSuite
from interp.study import StudyConfig, StudyResult, run_study
from interp.study_plans import make_plans, random_plans, released_plan
from interp.training.restore_config import PRESETS, RestoreConfig, paper_alignment_layers


@pytest.fixture()
def pair(saved_pair):
    return saved_pair


def test_refusal_log_odds_is_zero_at_even_odds():
    logprobs = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.0, 0.9]]))
    odds = refusal_log_odds(logprobs, [0, 1])
    assert odds[0].item() == pytest.approx(0.0, abs=1e-6)
    assert odds[1].item() == pytest.approx(np.log(0.1 / 0.9), abs=1e-5)


def test_bad_evaluation_input_is_named():
    with pytest.raises(EmptyPromptSetError):
        EvalSuite(
            harmful=harmful_prompts("val").head(0), harmless=harmless_prompts("val"), task=arithmetic_prompts("val")
        )
    with pytest.raises(ConfigError, match="reference answer"):
        EvalSuite(harmful=harmful_prompts("val"), harmless=harmless_prompts("val"), task=harmless_prompts("val"))
    with pytest.raises(ConfigError):
        EvalConfig(batch_size=0)


def test_plans_follow_the_map_and_the_paper(pair):
    layer_map = layer_map_for(pair.base, pair.finetuned, selected=(1, 2))
    plans = {p.key: p for p in make_plans(layer_map, seed=0)}
    assert plans["ranked"].layers == (1, 2) and plans["ranked"].alignment == (1, 2, 3)
    assert plans["all_layers"].layers == (0, 1, 2, 3) and plans["all_layers"].alignment == (3,)
    assert plans["bottom_k"].layers == tuple(sorted(layer_map.ranked_layers[-2:]))
    assert len(plans["random_k"].layers) == 2 and plans["random_k"].alignment[-1] == 3
    assert make_plans(layer_map, seed=0)[2] == plans["random_k"]  # seeded
    assert paper_alignment_layers(30) == [4, 9, 14, 19, 24, 29]
    assert paper_alignment_layers(32) == [4, 9, 14, 19, 24, 29, 31]
    with pytest.raises(ConfigError, match="unknown baselines"):
        StudyConfig(baselines=("ranked_by_magic",))


def test_a_study_writes_adapters_a_merged_model_and_a_report(pair, tmp_path):
    small = small_analysis_prompts()
    folder = tmp_path / "run"
    analysis = analyze(
        pair,
        folder,
        AnalysisConfig(k=2, causal_prompts=4, steer_max_new_tokens=4, refusal_tokens=(5,), steer_scales=(1.0,)),
        small,
        progress=False,
        log=lambda _: None,
    )
    config = StudyConfig(restore=RestoreConfig(steps=2, batch_size=4), evaluation=QUICK)
    retain = harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8)
    harmful = harmful_prompts("train").head(8)

    def study():
        return run_study(
            pair,
            analysis,
            folder,
            harmful=harmful,
            retain=retain,
            suite=tiny_suite(),
            config=config,
            progress=False,
            log=lambda _: None,
        )

    result = study()

    report = json.loads((folder / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names[:2] == ["base", "finetuned"] and names[2].startswith("restored (ranked top-2)")
    assert len(names) == 8 and names[-2].startswith("components top-") and names[-1].startswith("steering")
    for model in report["models"]:
        for key in (
            "name",
            "harmful_refusal",
            "harmless_refusal",
            "xstest_refusal",
            "task_accuracy",
            "kl",
            "trainable_params",
            "train_seconds",
        ):
            assert key in model, key
    params = {m["plan"]: m["trainable_params"] for m in report["models"]}
    assert params["base"] == 0 and 0 < params["ranked"] < params["all_layers"]
    assert 0 < params["components"] < params["ranked"]  # k components: fewer modules than k blocks
    assert any(t.target == "component / block plan trainable params < 1" and t.verdict == "met" for t in result.targets)
    assert "| restored (ranked top-2) |" in (folder / "report.md").read_text()
    for plan in ("all_layers", "random_k", "bottom_k", "components"):
        assert (folder / "baselines" / plan / "adapter" / "adapter_config.json").exists()
    # The component plan's adapter holds LoRA weights on the component map's modules and nowhere else.
    weights = load_file(str(folder / "baselines" / "components" / "adapter" / "adapter_model.safetensors"))
    placed = {(int(key.split(".layers.")[1].split(".")[0]), key.split(".")[-3]) for key in weights}
    expected = {(layer, m) for layer, names in analysis.component_map.modules.items() for m in names}
    assert placed == expected

    # The saved adapter on a plain HF model equals the merged folder and the in-memory restored model.
    plain = load_model(pair.finetuned.path)
    adapted = PeftModel.from_pretrained(plain.hf, folder / "adapter")
    merged = load_model(folder / "restored")
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        expected = result.restored[0].model.hf(ids).logits
        torch.testing.assert_close(adapted(ids).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged.hf(ids).logits, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(pair.finetuned.hf(ids).logits, expected)

    again = study()
    assert all(r.cached for r in again.restored)
    assert [r.harmful_refusal for r in again.rows] == [r.harmful_refusal for r in result.rows]
    loaded = StudyResult.load(folder)
    assert [r.name for r in loaded.rows] == names and loaded.targets == again.targets
    assert loaded.histories == again.histories

    # Figures are drawn once per analysis and rows: a rerun from the cache keeps them, new rows redraw.
    default_run = importlib.import_module("interp.default_run")
    first = default_run._figures(folder, analysis, result)
    stamps = {path: path.stat().st_mtime_ns for path in first}
    assert default_run._figures(folder, analysis, again) == first
    assert {path: path.stat().st_mtime_ns for path in first} == stamps
    next(iter(again.histories.values()))[0]["safety"] += 1.0
    default_run._figures(folder, analysis, again)
    drawn = folder / "figures" / "restore_history.png"
    assert drawn.stat().st_mtime_ns != stamps[drawn]


def test_a_suite_sample_is_seeded_and_keeps_the_other_sets():
    suite = tiny_suite()
    sample = suite.sample({"harmful": 3, "task": 2}, seed=0)
    assert sample.sizes() == suite.sizes() | {"harmful": 3, "task": 2}
    assert set(sample.harmful.instructions) < set(suite.harmful.instructions)
    assert sample.harmful.instructions == suite.sample({"harmful": 3}, seed=0).harmful.instructions
    assert sample.harmful.instructions != suite.sample({"harmful": 3}, seed=1).harmful.instructions
    with pytest.raises(ConfigError, match="unknown sets"):
        suite.sample({"harmfull": 3})


def test_an_unknown_run_size_is_refused_before_any_work(monkeypatch):
    default_run = importlib.import_module("interp.default_run")
    monkeypatch.setattr(default_run, "default_model_path", lambda: pytest.fail("did work"))
    with pytest.raises(ConfigError, match="size must be one of smoke, look, full"):
        default_run.run_default("unused", size="huge")


def test_random_plans_are_seeded_draws_within_their_depth_range(pair):
    layer_map = layer_map_for(pair.base, pair.finetuned, selected=(2, 3))
    draws = random_plans(layer_map, 3, low=1)  # all three pairs of layers 1..3
    assert [p.key for p in draws] == ["random_k", "random_k:1", "random_k:2"]
    assert all(len(p.layers) == 2 and min(p.layers) >= 1 and p.alignment[-1] == 3 for p in draws)
    assert random_plans(layer_map, 3, low=1) == draws  # seeded
    assert random_plans(layer_map, 1)[0] == make_plans(layer_map, ("random_k",))[1]  # the study's baseline
    with pytest.raises(ConfigError, match="low must be in"):
        random_plans(layer_map, 1, low=3)
    singles = random_plans(layer_map, 4, k=1)  # every layer once: a draw that repeats is skipped
    assert sorted(p.layers for p in singles) == [(0,), (1,), (2,), (3,)]
    with pytest.raises(ConfigError, match="only 4 distinct sets"):
        random_plans(layer_map, 5, k=1)


def test_draws_can_hold_a_layer_and_avoid_given_sets():
    from interp.study_plans import random_plans

    class Map:  # the two attributes random_plans reads
        n_layers, selected_layers = 30, [20, 26, 29]

    draws = random_plans(Map(), draws=9, seed=3, low=20, holding=29, exclude=[[20, 26, 29]])
    assert len({plan.layers for plan in draws}) == 9
    assert all(29 in plan.layers and min(plan.layers) >= 20 and plan.layers != (20, 26, 29) for plan in draws)
    assert all(plan.alignment == tuple(sorted(set(plan.layers) | {29})) for plan in draws)
    with pytest.raises(ConfigError, match="only 36 distinct sets"):  # C(9, 2) = 36 pairs beside 29, none excluded
        random_plans(Map(), draws=37, low=20, holding=29)
    shared = draws[0].aligned_at([4, 9, 14, 19, 24, 29])
    assert shared.layers == draws[0].layers and shared.alignment == (4, 9, 14, 19, 24, 29)


def test_the_released_recipe_is_a_row_of_its_own_settings(pair, tmp_path, monkeypatch):
    """``released`` (on by ``interp run --full``) trains the released recipe's placement with its own
    settings, apart from the lockstep plans, and shares its cache entry with the protocol's H4 row."""
    analysis = analyze(pair, tmp_path / "run", AnalysisConfig(k=2, causal_prompts=4, steer_max_new_tokens=4,
                       refusal_tokens=(5,), steer_scales=()), small_analysis_prompts(), progress=False,
                       log=lambda _: None)  # fmt: skip
    preset = PRESETS["safereact"]
    monkeypatch.setitem(PRESETS, "safereact", replace(preset, config=replace(preset.config, steps=2, batch_size=4)))
    harmful, retain = harmful_prompts("train").head(8), harmless_prompts("train").head(8)
    result = run_study(
        pair, analysis, tmp_path / "run", harmful=harmful, retain=retain, suite=tiny_suite(),
        config=StudyConfig(restore=RestoreConfig(steps=2, batch_size=4), baselines=("released",), evaluation=QUICK),
        progress=False, log=lambda _: None,
    )  # fmt: skip
    released = result.restored[-1]
    assert [r.plan.key for r in result.restored] == ["ranked", "released"] and released.stats.steps == 2
    assert released.stats.config["rank"] == 16 and released.stats.config["teacher"] == "reminder"
    assert (tmp_path / "run" / "baselines" / "released" / "adapter" / "adapter_config.json").exists()
    assert released.plan == released_plan(pair.n_layers)
    assert "released" not in StudyConfig().baselines  # the quick look leaves it out (400 steps)
