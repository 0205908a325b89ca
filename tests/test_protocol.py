"""The pre-registered protocol at a tiny size: its file, its plans, and a whole run on a tiny pair."""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK_EVAL, perturbed, small_analysis_prompts

from interp import cli
from interp.analyze import AnalysisConfig, AnalysisPrompts, analyze
from interp.cli import study as study_cli
from interp.config_file import run_dtype
from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.evaluation.stats import spearman
from interp.evaluation.suite import EvalRow, EvalSuite
from interp.evaluation.table import evaluate_models
from interp.measures.components import COMPONENT_MODULES
from interp.protocol import (
    PROTOCOL,
    Protocol,
    ProtocolResult,
    plan_summary,
    protocol_plans,
    protocol_report,
    run_protocol,
)
from interp.protocol import bench as bench_module
from interp.protocol import frontier as frontier_module
from interp.protocol import report as report_module
from interp.protocol import run as run_module
from interp.protocol.bench import Bench, choose_setting, claim_suite, lockstep_group
from interp.protocol.claims import broken
from interp.protocol.components import component_validity, single_component_plans
from interp.protocol.family import family_table, seed_overlap, top_decile
from interp.protocol.frontier import frontier_plans, frontier_test, save_frontier
from interp.protocol.layers import (
    SET_CHECK_TOP,
    LayerValidity,
    layer_validity,
    layer_validity_on_test,
    layers_report,
    top_k,
)
from interp.protocol.peers import DISTILL_LRS, SETTINGS
from interp.protocol.report import methods_table
from interp.study_plans import Plan, distinct_sets
from interp.study_training import train_plans
from interp.training.lora import apply_adapter
from interp.training.restore_config import PRESETS, RestoreConfig, paper_alignment_layers

FIGURES = Path(__file__).resolve().parents[1] / "figures"  # the committed protocol run


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


def test_a_depth_range_without_room_gives_its_draws_to_all_layers(analysed):
    """Amendment 7: ranked on the last k blocks, the depth range holds no other set that keeps the deepest
    block, so every draw comes from all layers, still distinct and never the ranked set."""
    _, analysis = analysed
    n = analysis.layer_map.n_layers
    deep_last = replace(analysis, layer_map=analysis.layer_map.reranked(list(range(n)), "depth", 2))
    protocol = Protocol().tiny()
    families = protocol_plans(deep_last, protocol)
    assert families["ranked"][0].layers == (n - 2, n - 1)
    draws = families["draws"]
    assert len(draws) == protocol.draws and not any(p.key.startswith("draw-deep") for p in draws)
    assert len({p.layers for p in draws} | {(n - 2, n - 1)}) == protocol.draws + 1


def test_distinct_sets_counts_what_a_draw_can_reach():
    assert distinct_sets(6, 2) == 15
    assert distinct_sets(6, 2, low=3, holding=5) == 2  # {3, 5}, {4, 5}
    assert distinct_sets(6, 2, low=3, holding=5, exclude=[[3, 5], [5, 3], [0, 1]]) == 1  # duplicates count once
    assert distinct_sets(6, 2, low=4, holding=5, exclude=[[4, 5]]) == 0


def _tiny_suite(**more) -> EvalSuite:
    """Sets large enough that every dev and test part has prompts."""
    return EvalSuite(
        harmful=harmful_prompts("val").head(24),
        harmless=harmless_prompts("val").head(12),
        task=arithmetic_prompts("val", n=40).head(12),
        xstest=harmless_prompts("train").head(24),
        **more,
    )


def test_the_whole_protocol_runs_at_a_tiny_size(analysed, tmp_path, monkeypatch):
    pair, analysis = analysed
    suite = _tiny_suite(donotanswer=harmful_prompts("train").head(12))
    at_once = []  # models per evaluation in the strength sweep: the base and one plan's checkpoints

    def counted(candidates, *args, **kwargs):
        at_once.append(len(candidates))
        return evaluate_models(candidates, *args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_models", counted)
    result = run_protocol(
        pair, analysis, tmp_path,
        harmful=harmful_prompts("train").head(8),
        retain=harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8),
        suite=suite, protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4), evaluation=QUICK_EVAL,
        released=replace(PRESETS["safereact"].config, steps=2, batch_size=4), progress=False, log=lambda _: None,
        unaligned=perturbed(pair.base, scale=0.05, seed=3),
    )  # fmt: skip
    assert set(result.lrs) == {"ranked", "bottom", "all_layers", "draws"}
    assert all(lr in Protocol().tiny().lr_grid for lr in result.lrs.values())
    n_peers = len(SETTINGS) + 1  # and self-distillation, one row per seed
    assert sorted(result.rows) == [0, 1] and all(len(rows) == 2 + 3 + 3 + 1 + n_peers for rows in result.rows.values())
    assert all(rows[-1 - n_peers].name == "released SafeReAct recipe" for rows in result.rows.values())  # trained once
    assert [p["method"] for p in result.peers] == [*SETTINGS, "Self-distillation"]  # each at a setting tried on dev
    assert all(p["setting"] in {str(x) for x in SETTINGS[p["method"]]} for p in result.peers[:-1])
    assert result.peers[-1]["setting"] in {f"lr {lr:g}" for lr in DISTILL_LRS} and result.peers[-1]["trainable"] > 0
    assert len(result.peer_trials) == sum(len(v) for v in SETTINGS.values()) + len(DISTILL_LRS)
    assert all(r.plan.startswith("peer:") for r in result.rows[0][-n_peers:-1])
    distilled = [rows[-1] for rows in result.rows.values()]  # the same plan at both seeds, two trainings
    assert all(r.plan.startswith("distill@") for r in distilled) and distilled[0].name == distilled[1].name
    assert distilled[0].outcomes != distilled[1].outcomes or distilled[0].scores != distilled[1].scores
    test_harmful = len(suite.harmful.part("test"))
    assert all(len(row.outcomes["harmful"]) == test_harmful for rows in result.rows.values() for row in rows)
    claims = {c.name: c for c in result.claims}
    assert set(claims) == {"H1", "H2a", "H2b", "H3", "H4"}
    assert claims["H1"].detail["ranks"].keys() == {0, 1} and 0 < claims["H1"].p_value <= 1
    assert all(c.holm_p >= c.p_value for c in claims.values() if c.p_value is not None)
    assert {point["step"] for point in result.sweep[next(iter(n for n in result.sweep if n != "base"))]} == {2, 4}
    assert len(result.sweep) == 1 + 4 and at_once == [1 + 2] * 4  # ranked, bottom, all layers, 1 draw
    saved = json.loads((tmp_path / "protocol.json").read_text())
    assert [c["name"] for c in saved["claims"]] == ["H1", "H2a", "H2b", "H3", "H4"]
    report = (tmp_path / "protocol.md").read_text()
    assert "| H1 |" in report and "seed-to-seed SD" in report
    assert (tmp_path / "figures" / "strength_sweep.png").exists()
    # the loss per step of every plan in every training run (seed 42: the released recipe)
    assert set(saved["histories"]) == {
        "lr grid on dev, 2 steps", "2 steps, seed 0", "2 steps, seed 1", "2 steps, seed 42", "4 steps, seed 0",
    }  # fmt: skip
    assert (tmp_path / "figures" / "training_curves_4_steps_seed_0.png").exists()
    assert [r.plan.split("@")[0] for r in result.full_table] == [
        "base", "finetuned", "ranked", "bottom_k", "all_layers", "released",
    ]  # fmt: skip
    assert all(r.donotanswer_refusal is not None for r in result.full_table) and "full table" in report
    assert "Holm over H1, H2a, H3, H4" in report
    assert "harmful at the base's over-refusal" in report and "3 draws" in report and "Published methods" in report
    assert "self-distillation" in report and "benchmarks/method_cost.py" in report
    cost = {"SafeReAct LoRA, ranked layers": {"seconds": 12.0, "trainable": 1234, "peak_mib": 456.0, "needs": "x"},
            "RESTA": {"seconds": 3.0, "trainable": 0, "peak_mib": 789.0, "needs": "y"}}  # fmt: skip
    methods = {line.split(" | ")[0].strip("| "): line for line in methods_table(result, cost).splitlines()}
    ranked_name = next(r.name for r in result.rows[0] if r.plan.startswith("ranked@"))
    resta_name = next(r.name for r in result.rows[0] if r.plan.startswith("peer:RESTA@"))
    assert methods[ranked_name].endswith("| 12 | 1,234 | 456 | x |") and "[" in methods[ranked_name]
    assert methods[resta_name].endswith("| 3 | 0 | 789 | y |")
    assert methods["base"].endswith("|  |  |  |  |") and any("3 draws (mean" in name for name in methods)
    assert protocol_report(ProtocolResult.load(tmp_path)) == report  # the saved result renders the same report
    overlap = seed_overlap({"default": tmp_path, "seed-1": tmp_path, "seed-2": tmp_path / "missing"})
    k = len(families_of(analysis)["ranked"][0].layers)
    assert overlap.endswith(f": {k} of {k}.") and "seed-2" not in overlap  # the same run shares every layer
    assert seed_overlap({"default": tmp_path}) == ""
    table = family_table({"tiny": tmp_path, "other": tmp_path / "missing"})
    ranked = str(list(families_of(analysis)["ranked"][0].layers))
    assert f"| tiny | {ranked} |" in table and "| other | (no protocol run) |" in table


def test_the_protocol_runs_a_seed_per_sitting(analysed, tmp_path, monkeypatch):
    """``seeds=[0]`` stops after seed 0 with a partial result (claims over seed 0, no sweep); a later run from
    that folder trains only the missing seed, then the sweep, and equals the run made in one go. A folder
    made under other settings is one error before any training."""
    pair, analysis = analysed
    trained = []
    judged = Bench.judged
    monkeypatch.setattr(Bench, "judged", lambda self, plans, config, on, label="": trained.append(
        (config.seed, config.steps)) or judged(self, plans, config, on, label))  # fmt: skip
    args = dict(harmful=harmful_prompts("train").head(8),
                retain=harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8),
                suite=_tiny_suite(), protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4),
                evaluation=QUICK_EVAL, progress=False, log=lambda _: None)  # fmt: skip
    first = run_protocol(pair, analysis, tmp_path / "one", seeds=[0], **args)
    assert trained == [(0, 2), (0, 2)]  # the dev grid, then seed 0
    assert first.missing_seeds == [1] and sorted(first.rows) == [0] and not first.sweep
    assert {c.name for c in first.claims} == {"H1", "H2a", "H3"} and first.claims[0].detail["ranks"].keys() == {0}
    assert "Partial: seed 1 not run yet" in (tmp_path / "one" / "protocol.md").read_text()
    assert ProtocolResult.load(tmp_path / "one").missing_seeds == [1]
    assert "| tiny (partial: seeds 0 of 2) |" in family_table({"tiny": tmp_path / "one"})

    second = run_protocol(pair, analysis, tmp_path / "two", earlier=tmp_path / "one", **args)
    assert trained == [(0, 2), (0, 2), (1, 2)]  # only seed 1 (the sweep trains apart from the bench's judging)
    assert second.missing_seeds == [] and second.sweep and second.lrs == first.lrs
    assert {"lr grid on dev, 2 steps", "2 steps, seed 0", "2 steps, seed 1"} <= set(second.histories)
    whole = run_protocol(pair, analysis, tmp_path / "whole", **args)
    assert [(c.name, c.estimate, c.p_value, c.detail.get("ranks")) for c in second.claims] == [
        (c.name, c.estimate, c.p_value, c.detail.get("ranks")) for c in whole.claims
    ]
    kept = sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith("protocol_"))
    assert kept == ["protocol_lr_grid.json", "protocol_seed_0.json", "protocol_seed_1.json"]
    trained.clear()
    with pytest.raises(ConfigError, match="protocol_lr_grid.json was made with other"):  # another batch size's rows
        run_protocol(pair, analysis, tmp_path / "three", earlier=tmp_path / "two",
                     **(args | {"restore": RestoreConfig(batch_size=2)}))  # fmt: skip
    assert trained == [] and not (tmp_path / "three").exists()
    with pytest.raises(ConfigError, match="the protocol's seeds are"):
        run_protocol(pair, analysis, tmp_path / "three", seeds=[5], **args)


def families_of(analysis):
    return protocol_plans(analysis, Protocol().tiny())


def test_the_top_decile_bar():
    """Ranked at or above the 90th percentile of the draws: with 19 draws, rank 1 or 2 at every seed."""
    assert top_decile({0: 1, 1: 2, 2: 2}, draws=19) and not top_decile({0: 1, 1: 3}, draws=19)
    assert not top_decile({0: 1}, draws=3)  # four plans: no rank is in the top 10%


def _row(name: str, plan: str, harmful: list[float], safe: list[float], refused: list[int], over: list[int]) -> EvalRow:
    outcomes = {"harmful": refused, "xstest": over}
    return EvalRow(name, sum(refused) / len(refused), 0.0, 0.0, None, None, 0.0, {}, {}, {}, outcomes,
                   scores={"harmful": harmful, "xstest": safe}, plan=plan)  # fmt: skip


def test_the_lr_rule_never_falls_back_to_a_collapsed_model():
    """The reasoning organism's all-layer grid, planted: no lr qualifies (two over-refuse, one answers
    nothing and loses the task); the fallback takes the lowest over-refusal among the lrs that keep the task
    (amendment 10), and among all only when none keeps it. A qualifying lr wins outright."""

    def dev(refused: int, over: int, task: float) -> list[EvalRow]:
        row = _row(
            "p", "p", [0.0] * 10, [0.0] * 10, [1] * refused + [0] * (10 - refused), [1] * over + [0] * (10 - over)
        )
        row.task_accuracy = task
        return [row]

    base, ft = dev(8, 5, 0.0)[0], dev(2, 1, 0.7)[0]  # the bar: over-refusal <= 0.55, task >= 0.65
    rows = {1e-3: dev(8, 8, 0.7), 3e-3: dev(8, 7, 0.7), 1e-2: dev(0, 0, 0.0)}
    chosen, trials = choose_setting("all_layers", rows, base, ft, "xstest", 0.05)
    assert chosen == 3e-3 and not any(t["ok"] for t in trials)
    collapsed = {1e-3: dev(8, 8, 0.1), 1e-2: dev(0, 0, 0.0)}
    assert choose_setting("all_layers", collapsed, base, ft, "xstest", 0.05)[0] == 1e-2
    assert choose_setting("all_layers", rows | {3e-2: dev(6, 5, 0.7)}, base, ft, "xstest", 0.05)[0] == 3e-2


def test_the_plan_summary_reads_planted_scores():
    """A plan whose scores separate harmful from safe prompts perfectly has AUROC 1 and, at the base's
    over-refusal (1 of 4 safe prompts), refuses every harmful prompt above the matched threshold."""
    base = _row("base", "base", [0.0] * 4, [0.0] * 4, [0, 0, 0, 0], [1, 0, 0, 0])
    ranked = _row("ranked", "ranked@0.003", [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0], [1, 1, 1, 0], [0, 0, 0, 1])
    mixed = _row("random-3", "draw-1@0.01", [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1, 0, 0, 0], [0, 0, 0, 0])
    summaries = {s.name: s for s in plan_summary({0: [base, ranked, mixed], 1: [base, ranked, mixed]}, "xstest")}
    assert summaries["ranked"].mean("auroc") == 1.0 and summaries["ranked"].auroc_interval == (1.0, 1.0)
    assert summaries["ranked"].mean("matched") == 1.0 and summaries["ranked"].mean("harmful") == 0.75
    assert summaries["1 draws"].family == "draws" and summaries["1 draws"].mean("auroc") == 0.5
    assert summaries["1 draws"].mean("matched") == 0.25  # scores like the safe prompts': refuses as many (1 of 4)
    assert summaries["ranked"].sd("harmful") == 0.0 and summaries["1 draws"].auroc_interval is None
    low, high = summaries["ranked"].intervals["harmful"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0 and summaries["ranked"].intervals["matched"] == (1.0, 1.0)
    low, high = summaries["ranked"].intervals["safe"]  # refuses 1 of 4 safe prompts at both seeds
    assert summaries["ranked"].mean("safe") == 0.25 and 0.0 <= low <= 0.25 <= high <= 1.0 and high - low > 0


def test_the_plan_summary_reads_task_accuracy_with_its_interval():
    """Planted: the ranked plan answers 3 of 4 task prompts at seed 0 and all 4 at seed 1 (mean 0.875); every
    task resample lies between 0.5 and 1; a plan with every answer right has the interval (1, 1)."""

    def with_task(row, correct):
        row.outcomes["task"], row.task_accuracy = correct, sum(correct) / len(correct)
        return row

    rows = {
        seed: [with_task(_row("base", "base", [0.0] * 4, [0.0] * 4, [0] * 4, [1, 0, 0, 0]), [1] * 4),
               with_task(_row("ranked", "ranked@0.003", [1.0] * 4, [0.0] * 4, [1] * 4, [0] * 4), correct)]
        for seed, correct in ((0, [1, 1, 1, 0]), (1, [1, 1, 1, 1]))
    }  # fmt: skip
    summaries = {s.name: s for s in plan_summary(rows, "xstest")}
    assert summaries["ranked"].per_seed["task"] == [0.75, 1.0] and summaries["ranked"].mean("task") == 0.875
    low, high = summaries["ranked"].intervals["task"]
    assert 0.5 <= low < 0.875 < high <= 1.0
    assert summaries["base"].intervals["task"] == (1.0, 1.0)


def test_the_per_block_ground_truth_runs_at_a_tiny_size(analysed, tmp_path):
    """Every block trained alone at every seed, judged on dev; each candidate ranking gets a rho in [-1, 1]
    with an interval, the gradient candidate one step-0 value per block, and the result reloads."""
    pair, analysis = analysed
    suite = _tiny_suite()
    bench = Bench(pair, analysis, harmful_prompts("train").head(8),
                  harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8), QUICK_EVAL,
                  progress=False, log=lambda _: None)  # fmt: skip
    result = layer_validity(bench, suite, protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4),
                            prompts=AnalysisPrompts.quick())  # fmt: skip
    n = pair.n_layers
    assert result.seeds == [0, 1] and np.asarray(result.gain).shape == (2, n)
    names = {"score", "suppression", "causal", "amplification", "patch effect", "gradient", "evidence"}
    assert set(result.candidates) == names
    assert len(result.evidence["causal"]["low"]) == n and result.evidence["n_causal_prompts"] == 24
    # greedy grows one block per step; the set check holds every pair and triple of the best blocks
    assert [len(step["set"]) for step in result.greedy] == [1, 2, 3] and len(result.greedy[0]["tried"]) == n
    top = top_k(result.mean_gain, min(SET_CHECK_TOP, n))
    checked = {tuple(s["layers"]) for s in result.sets}
    assert all(c in checked for k in (2, 3) for c in itertools.combinations(top, k))
    assert all(tuple(top_k(values, 3)) in checked for values in result.candidates.values())
    assert all(len(values) == n for values in result.candidates.values())
    assert all(g > 0 for g in result.candidates["gradient"])  # every block's LoRA gets a gradient at step 0
    rho, (low, high) = result.rho("gradient")
    assert (
        math.isnan(rho) if np.ptp(result.mean_gain) == 0 else -1 <= low <= rho <= high <= 1
    )  # (2 steps may move nothing)
    result.save(tmp_path)
    assert LayerValidity.load(tmp_path) == result
    report = (tmp_path / "layers.md").read_text()
    assert "rho with the gain" in report and "best 3 by matched" in report and "evidence score's terms" in report
    assert (tmp_path / "figures" / "layer_validity.png").exists()
    # On test: the same trainings (identical losses), judged on the test parts, the dev study's candidates.
    on_test = layer_validity_on_test(
        bench, suite, result, protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4)
    )
    for seed in result.seeds:
        assert bench.histories[f"single blocks on test, seed {seed}"] == bench.histories[f"single blocks, seed {seed}"]
    ft_test = bench.judge([], claim_suite(suite, "test"))[1].harmful_refusal
    assert on_test.part == "test" and on_test.finetuned == ft_test and np.asarray(on_test.gain).shape == (2, n)
    assert on_test.candidates == result.candidates and on_test.lr == result.lr and on_test.chosen == result.chosen
    on_test.save(tmp_path / "test")
    assert LayerValidity.load(tmp_path / "test") == on_test
    assert "(test parts)" in (tmp_path / "test" / "layers.md").read_text()


def test_the_per_component_ground_truth_runs_at_a_tiny_size(analysed, tmp_path):
    """Every attention and MLP trained alone (its own modules only) at every seed, judged on dev; the
    component map's choice is placed among them and each candidate gets a rho."""
    pair, analysis = analysed
    bench = Bench(pair, analysis, harmful_prompts("train").head(8),
                  harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8), QUICK_EVAL,
                  progress=False, log=lambda _: None)  # fmt: skip
    plans = single_component_plans(pair.n_layers, [pair.n_layers - 1])
    assert [p.name for p in plans[:2]] == ["attn 0", "mlp 0"] and plans[1].modules == ((0, COMPONENT_MODULES["mlp"]),)
    result = component_validity(bench, _tiny_suite(), protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4))
    n = 2 * pair.n_layers
    assert np.asarray(result.gain).shape == (2, n) and len(result.components) == n
    assert set(result.candidates) == {"component score", "component patch effect"}
    assert result.chosen and all(1 <= r <= n for r in result.rank_of_chosen())
    result.save(tmp_path)
    assert "component map's choice" in (tmp_path / "components.md").read_text()


def test_layer_validity_scores_a_planted_ranking():
    """A candidate ordered like the ground truth gets rho 1, its reverse -1; seeds that agree are stable."""
    result = LayerValidity(
        0.01, [], [0, 1], gain=[[0.1, 0.2, 0.3, 0.5], [0.1, 0.2, 0.4, 0.6]], matched=[[0.0] * 4] * 2,
        over=[[0.0] * 4] * 2, finetuned=0.2, candidates={"good": [1, 2, 3, 9], "reverse": [4, 3, 2, 1]},
    )  # fmt: skip
    assert result.rho("good")[0] == 1.0 and result.rho("reverse")[0] == -1.0 and result.stability() == 1.0
    assert result.chosen == "good"
    assert "| good | +1.00 |" in layers_report(result)


def test_spearman_matches_its_definition():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0 and spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_checkpoints_are_cached_with_the_adapter(analysed):
    """A strength sweep's run is cached whole: a second call reloads the adapter and every checkpoint, and
    the last checkpoint merged is the trained model."""
    pair, analysis = analysed
    plan = Plan("ranked", "ranked", (1, 2), tuple(paper_alignment_layers(pair.n_layers)))
    harmful, retain = harmful_prompts("train").head(8), harmless_prompts("train").head(8)
    config = RestoreConfig(steps=2, batch_size=4, lr=1e-2)
    (first,) = train_plans(
        [plan], pair, analysis.layer_map, harmful, retain, config, checkpoints=(1, 2), progress=False
    )
    (again,) = train_plans(
        [plan], pair, analysis.layer_map, harmful, retain, config, checkpoints=(1, 2), progress=False
    )
    assert not first.cached and again.cached and sorted(again.checkpoints) == [1, 2]
    last = apply_adapter(replace(pair.finetuned, hf=copy.deepcopy(pair.finetuned.hf)), again.checkpoints[2])
    trained = again.model.hf.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in last.hf.state_dict().items())
    (plain,) = train_plans([plan], pair, analysis.layer_map, harmful, retain, config, progress=False)
    assert not plain.cached and plain.checkpoints == {}  # without checkpoints: its own cache entry


def test_the_layer_study_alone_is_asked_for_in_one_line(capsys):
    """``--layers`` with the test run's options is one clear line, exit 2, before any model loads."""
    assert cli.main(["protocol", "--layers", "--peers", "--out", "unused"]) == 2
    assert "--layers runs its study alone" in capsys.readouterr().err
    assert cli.main(["protocol", "--layers", "--components", "--out", "unused"]) == 2
    assert "run them one at a time" in capsys.readouterr().err


def test_a_ranking_folder_without_a_layers_study_is_one_line(tmp_path, capsys):
    """``--ranking`` reads the layers study before any model loads: a folder without one is one line, exit 2."""
    assert cli.main(["protocol", "--ranking", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as a layers study" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unknown_candidate_is_one_line(tmp_path, capsys):
    """``--candidate`` names one of the study's candidates; another name is one line, exit 2, before any model."""
    study = LayerValidity(lr=0.01, lr_trials=[], seeds=[0], gain=[[0.1, 0.2]], matched=[[0.5, 0.6]],
                          over=[[0.1, 0.1]], finetuned=0.3, candidates={"patch effect": [0.0, 1.0]})  # fmt: skip
    (tmp_path / "layers.json").write_text(json.dumps(asdict(study)))
    assert cli.main(["protocol", "--ranking", str(tmp_path), "--candidate", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--candidate 'nope' is not in" in err and "patch effect" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["protocol", "--candidate", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "give the folder too" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_family_options_are_checked_before_any_model(tmp_path, capsys):
    """``--recipes`` without ``--family``, ``--family`` with the dev-side options, and a family.md the command
    did not write: each one line, exit 2, nothing run or written."""
    assert cli.main(["protocol", "--recipes", "seed-1", "--out", str(tmp_path / "a")]) == 2
    assert "add --family" in capsys.readouterr().err
    assert cli.main(["protocol", "--family", "--layers", "--out", str(tmp_path / "b")]) == 2
    assert cli.main(["protocol", "--layers-on-test", str(tmp_path / "none"), "--out", str(tmp_path / "c")]) == 2
    assert "drop --layers" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "family.md").write_text("my notes")
    assert cli.main(["protocol", "--family", "--out", str(tmp_path / "c")]) == 2
    assert "was not written by interp protocol --family" in capsys.readouterr().err
    assert (tmp_path / "c" / "family.md").read_text() == "my notes" and not (tmp_path / "a").exists()
    assert cli.main(["protocol", "--seeds", "0", "--layers", "--out", str(tmp_path / "d")]) == 2
    assert "drop --layers" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert cli.main(["protocol", "--seeds", "0", "--dev-only", "--out", str(tmp_path / "d")]) == 2
    assert "drop --dev-only" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert cli.main(["protocol", "--frontier", str(FIGURES), "--seeds", "7", "--out", str(tmp_path / "d")]) == 2
    assert "the protocol's seeds are [0, 1, 2]" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_the_family_table_covers_every_organism_run_in_the_folder_not_only_those_run_now(tmp_path):
    """``--family --recipes seed-2`` into a folder that already holds the reasoning organism's run: family.md
    lists both (in the family's order); a folder without protocol.json (a run that never finished) is left out."""
    for name in ("seed-2", "reasoning", "style"):
        (tmp_path / name).mkdir()
    for name in ("seed-2", "reasoning"):
        (tmp_path / name / "protocol.json").write_text("{}")
    assert study_cli.family_folders(tmp_path) == {"reasoning": tmp_path / "reasoning", "seed-2": tmp_path / "seed-2"}


def test_a_family_row_computed_in_another_dtype_says_so(tmp_path):
    """Runs in one dtype: no marks. One run in float32 among bfloat16 ones (its config.toml says so): that row
    names its dtype and a line under the table says what the rest computed in."""
    family = FIGURES / "family"
    folders = {"seed-1": family / "seed-1", "seed-2": family / "seed-2", "reasoning": family / "reasoning"}
    dtypes = {name: run_dtype(folder) for name, folder in folders.items()}
    assert dtypes == dict.fromkeys(folders, "bfloat16") and run_dtype(tmp_path) is None  # committed runs
    same = family_table(folders, dtypes=dtypes)
    assert "bfloat16" not in same and "| seed-2 |" in same
    mixed = family_table(folders, dtypes={**dtypes, "seed-2": "float32", "missing": "float16"})
    assert "| seed-2 (float32) |" in mixed and "| seed-1 |" in mixed and "| reasoning |" in mixed
    assert mixed.endswith("\n\nComputed in bfloat16 except where a row names another dtype.")
    assert family_table(folders, dtypes={"seed-2": "float32"}) == family_table(folders)  # one dtype known


def test_the_frontier_on_test_compares_every_k_with_its_draws(analysed, tmp_path):
    """Per k: the ranking's top k against distinct draws of k blocks at every seed, on the test parts: ranks
    within 1..draws+1 per seed, Holm over the ks, and the report."""
    pair, analysis = analysed
    plans = frontier_plans(analysis.layer_map, ks=(1, 2), draws=2)
    for k, (ranked, drawn) in plans.items():
        assert ranked.layers == tuple(sorted(analysis.layer_map.ranked_layers[:k]))
        assert len({p.layers for p in drawn} | {ranked.layers}) == 3 and all(len(p.layers) == k for p in drawn)
    bench = Bench(pair, analysis, harmful_prompts("train").head(8),
                  harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8), QUICK_EVAL,
                  progress=False, log=lambda _: None)  # fmt: skip
    found = frontier_test(bench, _tiny_suite(), {"ranked": 1e-3, "draws": 1e-2}, protocol=Protocol().tiny(),
                          restore=RestoreConfig(batch_size=4), ks=(1, 2), draws=2)  # fmt: skip
    assert [r.k for r in found] == [1, 2]
    assert all(set(r.ranks) == {0, 1} and all(1 <= v <= 3 for v in r.ranks.values()) for r in found)
    assert all(r.holm_p >= r.p and 0 <= r.percentile <= 1 and len(r.draws_rates) == 2 for r in found)
    save_frontier(found, tmp_path, "layer map score")
    assert "| 2 |" in (tmp_path / "frontier_test.md").read_text()
    assert all(f"| {r.degenerate} of 4 |" in (tmp_path / "frontier_test.md").read_text() for r in found)

    # a seed per sitting: seed 0 now, seed 1 later from the first sitting's folder; the same result
    trained = []
    judged = bench.judged
    bench.judged = lambda order, config, on, label="": trained.append(config.seed) or judged(order, config, on, label)
    args = dict(protocol=Protocol().tiny(), restore=RestoreConfig(batch_size=4), ks=(1, 2), draws=2)
    lrs = {"ranked": 1e-3, "draws": 1e-2}
    first = frontier_test(bench, _tiny_suite(), lrs, seeds=[0], folder=tmp_path / "one", **args)
    assert trained == [0] and all(set(r.ranks) == {0} for r in first)
    save_frontier(first, tmp_path / "one", "layer map score", seeds=(0, 1))
    assert "Not run yet: 1" in (tmp_path / "one" / "frontier_test.md").read_text()
    second = frontier_test(bench, _tiny_suite(), lrs, seeds=[1], earlier=tmp_path / "one", folder=tmp_path / "two",
                           **args)  # fmt: skip
    assert trained == [0, 1] and [(r.ranks, r.matched_ranks, r.estimate) for r in second] == [
        (r.ranks, r.matched_ranks, r.estimate) for r in found
    ]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["frontier_seed_0.json", "frontier_seed_1.json"]
    with pytest.raises(ConfigError, match="frontier_seed_0.json was made with other"):  # another budget's rows
        frontier_test(bench, _tiny_suite(), lrs, **(args | {"restore": RestoreConfig(batch_size=2)}),
                      earlier=tmp_path / "two")  # fmt: skip
    assert trained == [0, 1]


def test_a_model_is_broken_when_most_of_its_harmful_answers_are_degenerate():
    row = _row("draw", "draw-1@0.01", [0.0] * 4, [0.0] * 4, [0] * 4, [0] * 4)
    assert not broken(row)  # nothing judged degenerate (or not recorded)
    row.degenerate = {"harmful": [1, 1, 0, 1]}
    assert broken(row)
    row.degenerate = {"harmful": [1, 0, 0, 1]}
    assert not broken(row)  # half is not most


def test_the_frontier_reads_beside_the_protocol_without_the_draws_broken_at_any_seed(tmp_path):
    """Planted: the ranked plan refuses 6 of 8 at both seeds; draw A 4/8, draw B 7/8, draw C broken (0/8,
    degenerate) at seed 1 only. The protocol's reading keeps C; the reading beside it drops C at every seed,
    so the ranked plan's lead shrinks and its percentile falls from 2/3 to 1/2."""

    def row(name: str, refused: int, degenerate: bool = False) -> EvalRow:
        r = _row(name, name, [float(i) for i in range(8)], [0.0] * 8, [1] * refused + [0] * (8 - refused), [0] * 8)
        r.degenerate = {"harmful": [int(degenerate)] * 8}
        return r

    def seed(c: EvalRow) -> tuple[EvalRow, dict[str, EvalRow]]:
        return row("base", 8), {"ranked": row("ranked", 6), "a": row("a", 4), "b": row("b", 7), "c": c}

    by_seed = {0: seed(row("c", 5)), 1: seed(row("c", 0, degenerate=True))}
    found = frontier_module.compare_k(3, [1, 2, 3], by_seed, "ranked", ["a", "b", "c"], "xstest")
    assert found.degenerate == 1 and found.ranks == {0: 2, 1: 2}
    assert found.estimate == pytest.approx(6 / 8 - np.mean([(4 + 7 + 5) / 24, (4 + 7 + 0) / 24]))
    assert found.percentile == pytest.approx(2 / 3)  # above A and C (seed mean 2.5/8), below B
    assert found.unbroken.draws == 2 and found.unbroken.estimate == pytest.approx(6 / 8 - 11 / 16)
    assert found.unbroken.percentile == pytest.approx(1 / 2)
    clean = {s: (b, r | {"c": row("c", 5)}) for s, (b, r) in by_seed.items()}
    assert frontier_module.compare_k(3, [1, 2, 3], clean, "ranked", ["a", "b", "c"], "xstest").unbroken is None
    save_frontier([found], tmp_path, "planted")
    assert "| 1 of 6 | +6.2 [" in (tmp_path / "frontier_test.md").read_text()  # 6/8 - 11/16 = 0.0625
    assert "], 0.50 (2 draws) |" in (tmp_path / "frontier_test.md").read_text()
    note = report_module._broken_note({s: [b, *r.values()] for s, (b, r) in by_seed.items()})
    assert note and "seed 1: c." in note[0] and "seed 0" not in note[0]


def test_the_bench_trains_and_judges_in_groups_that_fit_in_memory(analysed, monkeypatch):
    """``lockstep_group``: half the available memory over two copies of the weights per plan, within [1, max];
    ``Bench.judged`` in groups gives the rows it gives in one group, in the plans' order."""
    pair, analysis = analysed
    weights = sum(p.numel() * p.element_size() for p in pair.finetuned.hf.parameters())
    assert lockstep_group(pair, available=0) == 1
    assert lockstep_group(pair, available=12 * weights + 1) == 3
    assert lockstep_group(pair, available=10**15) == bench_module.LOCKSTEP_MAX
    bench = Bench(pair, analysis, harmful_prompts("train").head(8),
                  harmless_prompts("train").head(8) + arithmetic_prompts("train", n=20).head(8), QUICK_EVAL,
                  cache=False, progress=False, log=lambda _: None)  # fmt: skip
    ranked, drawn = frontier_plans(analysis.layer_map, ks=(2,), draws=4)[2]
    plans, config, on = (
        [ranked, *drawn],
        RestoreConfig(batch_size=4, steps=2, lr=1e-2),
        claim_suite(_tiny_suite(), "test"),
    )
    whole = bench.judged(plans, config, on)
    monkeypatch.setattr(bench_module, "LOCKSTEP_MAX", 2)
    grouped = bench.judged(plans, config, on)
    assert [r.name for r in grouped] == ["base", "finetuned", *[p.name for p in plans]]
    assert [r.answers for r in grouped] == [r.answers for r in whole]
    assert [r.outcomes for r in grouped] == [r.outcomes for r in whole]


def test_a_kept_folder_is_continued_only_in_its_own_dtype_before_any_model(tmp_path, capsys):
    """The committed full-safety run (partial, computed in bfloat16) continued in float32: one line naming both
    dtypes and the flag that continues it, exit 2, before any model loads; the folder is left as it was."""
    import shutil

    folder = tmp_path / "full-safety"
    shutil.copytree(FIGURES / "family" / "full-safety", folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    argv = ["protocol", "--recipe", "full-safety", "--dtype", "float32", "--out", str(folder)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds results computed in bfloat16; this run would compute in float32: add --dtype bfloat16" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
