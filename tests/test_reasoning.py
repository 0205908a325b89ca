"""Reasoning-aware judging: the assistant turn starts inside ``<think>``, and an answer's trace and final
answer are judged apart. Tiny scripted models give known answers (conftest.scripted_lm)."""

from __future__ import annotations

import pytest
from conftest import make_tokenizer, scripted_lm, tiny_suite

from interp.core.chat import ChatFormat
from interp.core.models import load_model
from interp.errors import ConfigError
from interp.evaluation.table import Candidate, EvalConfig, evaluate_models
from interp.report.tables import parts_table, study_report

R1 = ChatFormat.reasoning()


def evaluated(models: dict, budget: int) -> list:
    """The evaluation table of ``models`` (name -> model) on the tiny suite with the R1 format."""
    first = next(iter(models.values()))
    return evaluate_models(
        [Candidate(name, model) for name, model in models.items()],
        tiny_suite(),
        refusal_tokens=[5],
        reference=first,
        config=EvalConfig(max_new_tokens=budget, task_max_new_tokens=3, batch_size=8, kl_batch_size=4),
        chat=R1,
        progress=False,
        log=lambda _: None,
    )


def test_split_cuts_trace_and_final_answer():
    assert R1.split("Let me think. I can't decide.\n</think>\n\nSure, here it is.") == (
        "Let me think. I can't decide.",
        "Sure, here it is.",
        True,
    )
    assert R1.split("still thinking when the budget ran out") == ("still thinking when the budget ran out", "", False)
    assert ChatFormat().split("  plain answer ") == ("", "plain answer", True)
    no_prefill = ChatFormat(trace=("<think>", "</think>"))
    assert no_prefill.split("<think>a</think>b") == ("a", "b", True)
    assert no_prefill.split("no trace at all") == ("", "no trace at all", True)
    with pytest.raises(ConfigError, match="two non-empty delimiters"):
        ChatFormat(trace=("<think>", ""))


def test_the_prefill_ends_the_prompt_and_only_a_reasoning_format_changes_cache_keys():
    tokenizer = make_tokenizer()
    plain, reasoning = ChatFormat().render(tokenizer, "hi"), R1.render(tokenizer, "hi")
    assert reasoning == plain + "<think>\n"
    assert ChatFormat().to_dict() == {"system_prompt": None, "user_suffix": ""}  # keys made before stay valid
    assert R1.to_dict()["trace"] == ["<think>", "</think>"]
    assert ChatFormat(**{**R1.to_dict(), "trace": ["<think>", "</think>"]}) == R1  # from JSON


def test_trace_and_final_answer_are_judged_apart(tmp_path):
    """One model refuses in its final answer only, the other only 'refuses' inside its trace (a refusal
    phrase while thinking): the whole-answer substring judge calls both refusals, the split does not."""
    words = ["ok", "</think>", "Sorry, but no", "I can't stop thinking", "Sure, here"]
    finally_refuses = load_model(scripted_lm(tmp_path / "a", "ok</think>Sorry, but no", "<think>\n", words=words))
    thinks_aloud = load_model(
        scripted_lm(tmp_path / "b", "I can't stop thinking</think>Sure, here", "<think>\n", words=words)
    )
    suite = tiny_suite()
    rows = evaluated({"final refusal": finally_refuses, "trace only": thinks_aloud}, budget=16)
    first, second = rows
    n = len(suite.harmful)
    assert first.harmful_refusal == second.harmful_refusal == 1.0  # the whole answer: both "refuse"
    assert first.parts["harmful"] == {"trace": [0] * n, "answer": [1] * n, "finished": [1] * n}
    assert second.parts["harmful"] == {"trace": [1] * n, "answer": [0] * n, "finished": [1] * n}
    assert set(first.parts) == set(suite.sets()) - {"task"}
    text = parts_table(rows)
    assert "| trace only | harmful | 100.0% [" in text and f"{n}/{n}" in text
    assert "## Reasoning trace and final answer" in study_report(rows, [], [], {})


def test_a_trace_cut_by_the_budget_has_no_final_answer(tmp_path):
    words = ["hmm", " let", " me", " see"]
    model = load_model(scripted_lm(tmp_path / "long", "hmm let me see", "<think>\n", words=words))
    suite = tiny_suite()
    (row,) = evaluated({"long": model}, budget=3)
    n = len(suite.harmful)
    assert row.parts["harmful"] == {"trace": [0] * n, "answer": [0] * n, "finished": [0] * n}
