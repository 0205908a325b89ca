"""The restoration frontier: its plans per k, its comparisons on planted outcomes, and a whole run on a tiny
pair (trained, evaluated, written, and reloaded from the cache on a rerun)."""

from __future__ import annotations

import json

import pytest
from conftest import layer_map_for, tiny_suite

from interp.core.prompts import arithmetic_prompts, harmful_prompts, harmless_prompts
from interp.errors import ConfigError
from interp.evaluation.suite import EvalRow
from interp.frontier import Frontier, frontier_plans, run_frontier
from interp.report.plots import plot_frontier
from interp.study_plans import make_plans
from interp.training.restore_config import RestoreConfig


def test_frontier_plans_are_ranked_top_k_random_draws_and_all_layers(saved_pair):
    layer_map = layer_map_for(saved_pair.base, saved_pair.finetuned, selected=(2, 0))
    plans = frontier_plans(layer_map, ks=(2, 1), draws=2)
    assert [(p.kind, p.k) for p in plans] == [
        ("ranked", 1),
        ("random", 1),
        ("random", 1),
        ("ranked", 2),
        ("random", 2),
        ("random", 2),
        ("all_layers", 4),
    ]
    assert plans[0].plan.layers == (2,) and plans[0].plan.alignment == (2, 3)  # the top-ranked layer
    study = {p.key: p for p in make_plans(layer_map, ("all_layers", "random_k"))}
    assert plans[3].plan.key == "ranked" and plans[3].plan.layers == study["ranked"].layers == (0, 2)
    assert plans[3].plan.alignment == study["ranked"].alignment
    assert plans[4].plan.layers == study["random_k"].layers  # draw 0 at the map's k is the study's random_k
    assert plans[-1].plan.layers == study["all_layers"].layers
    assert all(len(p.plan.layers) == p.k for p in plans[:-1])
    for ks, draws in (((0, 1), 1), ((5,), 1), ((1, 1), 1), ((), 1), ((1,), 0)):
        with pytest.raises(ConfigError, match="frontier"):
            frontier_plans(layer_map, ks, draws)


def _row(name: str, kind: str, k: int, harmful_refused: int, params: int = 0) -> EvalRow:
    """A row with a planted outcome: the first ``harmful_refused`` of 100 harmful prompts refused."""
    outcomes = {"harmful": [1] * harmful_refused + [0] * (100 - harmful_refused), "harmless": [0] * 10, "task": [1] * 5}
    return EvalRow(
        name=name,
        harmful_refusal=harmful_refused / 100,
        refusal_score=0.0,
        harmless_refusal=0.0,
        xstest_refusal=None,
        task_accuracy=1.0,
        kl=0.0,
        harmful_answer_kinds={},
        examples={},
        n={"harmful": 100, "harmless": 10, "task": 5},
        outcomes=outcomes,
        trainable_params=params,
        train_seconds=params / 10,
        plan=name,
        info={"kind": kind, "k": k},
    )


def test_frontier_comparisons_on_planted_outcomes(tmp_path):
    rows = [
        _row("base", "base", 0, 80),
        _row("finetuned", "finetuned", 0, 20),
        _row("ranked top-1", "ranked", 1, 50, 10),
        _row("random-1 a", "random", 1, 30, 10),
        _row("random-1 b", "random", 1, 60, 10),
        _row("ranked top-2", "ranked", 2, 89, 20),
        _row("random-2 a", "random", 2, 40, 20),
        _row("all layers", "all_layers", 4, 90, 40),
    ]
    frontier = Frontier.from_rows(rows)
    one, two = frontier.comparisons
    assert (one.k, one.rank, two.rank) == (1, 2, 1)
    assert one.vs_random_pooled == pytest.approx(0.05)  # 50 - mean(30, 60)
    assert one.vs_all_layers.difference == pytest.approx(-0.40) and one.vs_all_layers.p_value < 1e-6
    assert not one.indistinguishable and not one.within
    assert two.vs_all_layers.difference == pytest.approx(-0.01) and two.indistinguishable and two.within
    assert [t.only_model for t in one.vs_random] == [20, 0] and [t.only_against for t in one.vs_random] == [0, 10]
    assert frontier.smallest_k() == frontier.smallest_k("within") == 2
    means = [p for p in frontier.points if p.kind == "random mean"]
    assert [(p.k, p.rates["harmful_refusal"]) for p in means] == [(1, pytest.approx(0.45)), (2, pytest.approx(0.40))]
    with pytest.raises(ConfigError, match="rule"):
        frontier.smallest_k("close")
    with pytest.raises(ConfigError, match="all-layer"):
        Frontier.from_rows(rows[:-1])

    frontier.save(tmp_path)
    loaded = Frontier.load(tmp_path)
    assert loaded.comparisons == frontier.comparisons
    assert json.loads((tmp_path / "frontier.json").read_text())["smallest_k"] == {"indistinguishable": 2, "within": 2}
    text = (tmp_path / "frontier.md").read_text()
    assert "| ranked top-2 | 20 |" in text and "not distinguishable from the all-layer recipe's" in text
    assert "| random-1 b |" in text
    assert len(plot_frontier(frontier.points).axes) == 4


def test_a_frontier_trains_evaluates_and_reuses_its_adapters(saved_pair, tmp_path):
    layer_map = layer_map_for(saved_pair.base, saved_pair.finetuned, selected=(1, 2))

    def run():
        return run_frontier(
            saved_pair,
            layer_map,
            [5],
            tmp_path / "frontier",
            harmful=harmful_prompts("train").head(4),
            retain=harmless_prompts("train").head(4) + arithmetic_prompts("train", n=20).head(4),
            suite=tiny_suite(),
            ks=(1, 2),
            draws=2,
            config=RestoreConfig(steps=2, batch_size=4),
            group=3,
            progress=False,
            log=lambda _: None,
        )

    frontier = run()
    kinds = [r.info["kind"] for r in frontier.rows]
    assert kinds == ["base", "finetuned", "ranked", "random", "random", "ranked", "random", "random", "all_layers"]
    trained = [r for r in frontier.rows if r.info["kind"] not in ("base", "finetuned")]
    # a time is reported for every trained row (a tiny plan can train in under the 0.1 s it is rounded to)
    assert all(r.trainable_params > 0 and r.train_seconds >= 0 for r in trained)
    assert all(r.train_seconds == 0 for r in frontier.rows if r.info["kind"] in ("base", "finetuned"))
    assert trained[0].trainable_params * 4 == trained[-1].trainable_params  # one layer of four
    for name in ("frontier.json", "frontier.md", "figures/frontier.png", "figures/frontier.svg"):
        assert (tmp_path / "frontier" / name).exists(), name
    again = run()
    assert all(r.info["adapter_cached"] for r in again.rows if "adapter_cached" in r.info)
    assert [r.outcomes for r in again.rows] == [r.outcomes for r in frontier.rows]
