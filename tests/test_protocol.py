"""The pre-registered protocol at a tiny size: its file, its plans, and a whole run on a tiny pair."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import QUICK_EVAL, small_analysis_prompts

from interp.analyze import AnalysisConfig, analyze
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.evaluation.table import EvalSuite
from interp.protocol import PROTOCOL, Protocol, protocol_plans, run_protocol
from interp.training.restore import PRESETS, RestoreConfig, paper_alignment_layers


def test_the_protocol_file_is_read_and_checked(tmp_path):
    protocol = Protocol.load()
    assert protocol.draws == 19 and protocol.seeds == (0, 1, 2) and protocol.budgets == (24, 96)
    assert protocol.long_budget_draws == 5 and "amendment" in PROTOCOL.read_text().lower()
    with pytest.raises(ConfigError, match="cannot be read"):
        Protocol.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="do not fit"):
        Protocol(budgets=(24, 12))


@pytest.fixture()
def analysed(saved_pair, tmp_path):
    small = small_analysis_prompts()
    config = AnalysisConfig(k=2, causal_prompts=4, steer_max_new_tokens=4, refusal_tokens=(5,), steer_scales=())
    return saved_pair, analyze(saved_pair, tmp_path / "run", config, small, progress=False, log=lambda _: None)


def test_every_plan_aligns_at_the_shared_layers_and_no_draw_repeats(analysed):
    pair, analysis = analysed
    families = protocol_plans(analysis, Protocol().tiny())
    layers = [plan.layers for plans in families.values() for plan in plans if plan.key != "all_layers"]
    assert len(layers) == len(set(layers))  # ranked, bottom, draws and tuning draws are all different sets
    shared = tuple(paper_alignment_layers(pair.n_layers))
    assert all(plan.alignment == shared for plans in families.values() for plan in plans)
    deepest = max(families["ranked"][0].layers)
    assert sum(deepest in plan.layers for plan in families["draws"]) >= 1


def test_the_whole_protocol_runs_at_a_tiny_size(analysed, tmp_path):
    pair, analysis = analysed
    suite = EvalSuite(
        harmful=harmful_prompts("val").head(24),
        harmless=harmless_prompts("val").head(12),
        task=arithmetic_prompts("val", n=40).head(12),
        xstest=harmless_prompts("train").head(24),
    )
    result = run_protocol(
        pair, analysis, tmp_path,
        harmful=harmful_prompts("train").head(8),
        retain=harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8),
        suite=suite, protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4), evaluation=QUICK_EVAL,
        released=replace(PRESETS["safereact"].config, steps=2, batch_size=4), progress=False, log=lambda _: None,
    )  # fmt: skip
    assert set(result.lrs) == {"ranked", "bottom", "all_layers", "draws"}
    assert all(lr in Protocol().tiny().lr_grid for lr in result.lrs.values())
    assert sorted(result.rows) == [0, 1] and all(len(rows) == 2 + 3 + 3 + 1 for rows in result.rows.values())
    assert all(rows[-1].name == "released SafeReAct recipe" for rows in result.rows.values())  # trained once
    test_harmful = len(suite.harmful.part("test"))
    assert all(len(row.outcomes["harmful"]) == test_harmful for rows in result.rows.values() for row in rows)
    claims = {c.name: c for c in result.claims}
    assert set(claims) == {"H1", "H2a", "H2b", "H3", "H4"}
    assert claims["H1"].detail["ranks"].keys() == {0, 1} and 0 < claims["H1"].p_value <= 1
    assert all(c.holm_p >= c.p_value for c in claims.values() if c.p_value is not None)
    assert {point["step"] for point in result.sweep[next(iter(n for n in result.sweep if n != "base"))]} == {2, 4}
    saved = json.loads((tmp_path / "protocol.json").read_text())
    assert [c["name"] for c in saved["claims"]] == ["H1", "H2a", "H2b", "H3", "H4"]
    report = (tmp_path / "protocol.md").read_text()
    assert "| H1 |" in report and "seed-to-seed SD" in report
    assert (tmp_path / "figures" / "strength_sweep.png").exists()
    assert set(saved["histories"]) == {"0", "1", "42"}  # the loss per step of every plan (42: the released recipe)
