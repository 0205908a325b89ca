"""Reasoning-aware judging: the assistant turn starts inside ``<think>``, and an answer's trace and final
answer are judged apart. Tiny scripted models give known answers (conftest.scripted_lm)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import make_tokenizer, scripted_lm, tiny_suite

from interp.core.chat import ChatFormat
from interp.core.models import load_model
from interp.errors import ConfigError
from interp.evaluation.suite import Candidate, EvalConfig
from interp.evaluation.table import evaluate_models
from interp.report.study_tables import parts_table, study_report

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


# ----------------------------------------------------------------------------- budgets per part, early stops
WORDS = ["a1", " a2", " a3", "</think>", "I can't", " b1", " b2", " b3"]


def answers(model, chat, **request) -> list[str]:
    from interp.core.generate import Request, generate_many

    (got,) = generate_many(model, [Request(["q1", "q2"], **request)], chat=chat, cache=False, progress=False)
    return got.answers


def test_the_trace_and_the_final_answer_have_budgets_of_their_own(tmp_path):
    """Trace 'a1 a2 a3', then the final answer 'I can't b1 b2 b3': with trace_tokens the trace's budget
    ends an unclosed trace, and max_new_tokens counts from the closing delimiter."""
    model = load_model(scripted_lm(tmp_path / "m", "a1 a2 a3</think>I can't b1 b2 b3", "<think>\n", words=WORDS))
    full = "a1 a2 a3</think>I can't b1 b2 b3"
    assert answers(model, R1, max_new_tokens=32) == [full] * 2
    assert answers(model, R1, max_new_tokens=3, trace_tokens=2) == ["a1 a2"] * 2  # cut inside the trace
    assert answers(model, R1, max_new_tokens=2, trace_tokens=8) == ["a1 a2 a3</think>I can't b1"] * 2
    assert answers(model, R1, max_new_tokens=2) == ["a1 a2"] * 2  # one budget for the whole answer
    with pytest.raises(ConfigError, match="budgets must be >= 1"):
        answers(model, R1, trace_tokens=0)


def test_a_reasoning_answer_stops_at_a_refusal_in_its_final_answer_only(tmp_path):
    """Stopping at a refusal phrase is decided on the final answer: a phrase in the trace does not stop
    generation, one after the closing delimiter does, and every judgment of the stopped answer (whole,
    trace, final) equals the complete answer's."""
    from interp.core.judge import is_refusal

    final = load_model(scripted_lm(tmp_path / "f", "a1 a2</think>I can't b1 b2 b3", "<think>\n", words=WORDS))
    trace = load_model(scripted_lm(tmp_path / "t", "a1 I can't a2</think> b1 b2 b3", "<think>\n", words=WORDS))
    stopped = answers(final, R1, max_new_tokens=32, stop_at_refusal=True)
    complete = answers(final, R1, max_new_tokens=32)
    assert stopped == ["a1 a2</think>I can't"] * 2 and complete == ["a1 a2</think>I can't b1 b2 b3"] * 2
    assert R1.split(stopped[0])[:2] == ("a1 a2", "I can't") and is_refusal(stopped[0]) == is_refusal(complete[0])
    assert answers(trace, R1, max_new_tokens=32, stop_at_refusal=True) == ["a1 I can't a2</think> b1 b2 b3"] * 2
    # without a reasoning format the phrase stops the answer wherever it is
    plain = load_model(scripted_lm(tmp_path / "p", "a1 I can't a2 b1", "<|im_start|>assistant\n", words=WORDS))
    assert answers(plain, ChatFormat(), max_new_tokens=32, stop_at_refusal=True) == ["a1 I can't"] * 2


def test_evaluation_budgets_per_part_need_a_reasoning_format(tmp_path):
    model = load_model(scripted_lm(tmp_path / "m", "a1 a2 a3</think>I can't b1 b2 b3", "<think>\n", words=WORDS))
    config = EvalConfig(max_new_tokens=4, task_max_new_tokens=3, batch_size=8, kl_batch_size=4, trace_tokens=2)
    assert config.room("harmful") == 6 and config.room("task") == 5
    kwargs = {"refusal_tokens": [5], "reference": model, "config": config, "progress": False, "log": lambda _: None}
    for bad in (config, EvalConfig(score_on="answer")):
        with pytest.raises(ConfigError, match="trace_tokens, judge_on and score_on need a reasoning format"):
            evaluate_models([Candidate("m", model)], tiny_suite(), **(kwargs | {"config": bad}))
    (cut,) = evaluate_models([Candidate("m", model)], tiny_suite(), chat=R1, **kwargs)
    n = len(tiny_suite().harmful)
    assert cut.parts["harmful"] == {"trace": [0] * n, "answer": [0] * n, "finished": [0] * n}
    roomy = replace(config, trace_tokens=4)
    (full,) = evaluate_models([Candidate("m", model)], tiny_suite(), chat=R1, **(kwargs | {"config": roomy}))
    assert full.parts["harmful"] == {"trace": [0] * n, "answer": [1] * n, "finished": [1] * n}


def test_judged_on_the_answer_a_refusal_counts_after_a_closed_trace_or_in_an_unclosed_one(tmp_path):
    """``judge_on="answer"``: a refusal inside a closed trace followed by compliance is no refusal (the
    whole output's judgment says it is); a refusal in a trace that never closes is one (there is no final
    answer: the whole output is what was written); the parts are the same either way."""
    in_trace = load_model(scripted_lm(tmp_path / "t", "I can't a2</think> b1 b2 b3", "<think>\n", words=WORDS))
    unclosed = load_model(scripted_lm(tmp_path / "u", "I can't a2 a3 b1 b2 b3", "<think>\n", words=WORDS))
    config = EvalConfig(max_new_tokens=4, task_max_new_tokens=3, batch_size=8, kl_batch_size=4, trace_tokens=6,
                        stop_at_refusal=False)  # fmt: skip
    kwargs = {"refusal_tokens": [5], "chat": R1, "progress": False, "log": lambda _: None}
    n = len(tiny_suite().harmful)
    got = {}
    for judge_on in ("whole", "answer"):
        rows = evaluate_models([Candidate("t", in_trace), Candidate("u", unclosed)], tiny_suite(), reference=in_trace,
                               config=replace(config, judge_on=judge_on), **kwargs)  # fmt: skip
        got[judge_on] = [(row.harmful_refusal, row.parts["harmful"]) for row in rows]
    (t_whole, t_parts), (u_whole, u_parts) = got["whole"]
    assert t_whole == 1.0 and t_parts == {"trace": [1] * n, "answer": [0] * n, "finished": [1] * n}
    assert u_whole == 1.0 and u_parts == {"trace": [1] * n, "answer": [0] * n, "finished": [0] * n}
    assert [rate for rate, _ in got["answer"]] == [0.0, 1.0]
    assert [parts for _, parts in got["answer"]] == [t_parts, u_parts]
    with pytest.raises(ConfigError, match="judge_on must be one of"):
        EvalConfig(judge_on="trace")


# ----------------------------------------------------------------------------- several samples per prompt
def test_several_samples_per_prompt_are_shares_of_samples_with_prompt_level_intervals(tmp_path):
    """Three seeded samples per prompt from a model that starts its answer with "I can't" about half the
    time at this temperature: each outcome is the mean of the three single-sample runs (seeds s, s + 1,
    s + 2) on that prompt, and the row's interval is the clustered one."""
    from interp.core.generate import Sampling
    from interp.evaluation.stats import rate_interval

    model = load_model(scripted_lm(tmp_path / "m", "I can't b1", "<|im_start|>assistant\n", words=WORDS))
    suite = tiny_suite()
    base = EvalConfig(max_new_tokens=4, task_max_new_tokens=3, batch_size=8, kl_batch_size=4)
    kwargs = {"refusal_tokens": [5], "reference": model, "progress": False, "log": lambda _: None}

    def row(config):
        return evaluate_models([Candidate("m", model)], suite, config=config, **kwargs)[0]

    sampling = Sampling(temperature=14.0, seed=7)  # the logit 10 * sqrt(d_model) against 307 others: about 1/2
    merged = row(replace(base, sampling=sampling, samples=3))
    singles = [row(replace(base, sampling=replace(sampling, seed=7 + k))) for k in range(3)]
    assert merged.samples == 3 and all(s.samples == 1 for s in singles)
    for name in ("harmful", "harmless", "xstest", "task"):
        expected = [sum(column) / 3 for column in zip(*(s.outcomes[name] for s in singles))]
        assert merged.outcomes[name] == pytest.approx(expected)
    shares = merged.outcomes["harmful"] + merged.outcomes["harmless"] + merged.outcomes["xstest"]
    assert any(0 < share < 1 for share in shares)  # the samples of some prompt disagree
    assert merged.harmless_refusal == pytest.approx(sum(s.harmless_refusal for s in singles) / 3)
    assert merged.interval("harmless_refusal") == rate_interval(merged.outcomes["harmless"], 3)
    with pytest.raises(ConfigError, match="samples=3 needs"):
        EvalConfig(samples=3)


def test_the_evaluate_command_with_budgets_per_part_and_several_samples(saved_pair, tmp_path):
    """``interp evaluate --reasoning --trace-tokens --temperature --samples --judge-on answer``: shares of
    samples in the JSON, the samples named in the table's note."""
    import json

    from interp.cli import main

    out = tmp_path / "out"
    args = ["evaluate", "--base", str(saved_pair.base.path), "--finetuned", str(saved_pair.finetuned.path)]
    args += ["--limit", "3", "--max-new-tokens", "2", "--reasoning", "--trace-tokens", "3", "--refusal-tokens", "5"]
    assert main([*args, "--temperature", "1.0", "--samples", "2", "--judge-on", "answer", "--out", str(out)]) == 0
    rows = json.loads((out / "evaluation.json").read_text())["models"]
    assert {row["samples"] for row in rows} == {2}
    shares = [x for row in rows for values in row["outcomes"].values() for x in values]
    assert len(shares) == 2 * (3 + 3 + 3) and all(x in (0, 0.5, 1) for x in shares)
    assert "Reasoning trace and final answer" in (out / "evaluation.md").read_text()


def test_capture_and_restore_take_the_reasoning_format(saved_pair, tmp_path, monkeypatch):
    """``--reasoning`` on capture and restore: the prompts end in the prefill (the capture records the
    format, and every prompt is longer by the prefill's tokens); restore trains with that format."""
    import interp.training.restore as restoration
    from interp.cli import main
    from interp.measures.capture import Activations

    model = str(saved_pair.base.path)
    for name, extra in (("plain", []), ("r1", ["--reasoning"])):
        assert main(["capture", "--model", model, "--limit", "2", "--out", str(tmp_path / name), *extra]) == 0
    plain, r1 = Activations.load(tmp_path / "plain"), Activations.load(tmp_path / "r1")
    assert r1.extra["chat"]["trace"] == ["<think>", "</think>"] and "trace" not in plain.extra["chat"]
    assert all(a < b for a, b in zip(plain.extra["token_lengths"], r1.extra["token_lengths"]))
    assert not torch.equal(plain.tensor, r1.tensor)

    seen = []
    real = restoration.restore
    monkeypatch.setattr(restoration, "restore", lambda *a, **k: seen.append(k["chat"]) or real(*a, **k))
    pair = ["--base", model, "--finetuned", str(saved_pair.finetuned.path)]
    args = ["restore", *pair, "--preset", "safereact", "--steps", "1", "--batch-size", "2", "--no-merged"]
    assert main([*args, "--reasoning", "--out", str(tmp_path / "restored")]) == 0
    assert seen == [R1]


def test_studies_on_the_reasoning_organism_read_the_final_answer():
    """``study_evaluation``: the reasoning organism's studies get room for a trace and read the final
    answer, its judgment and its refusal score; any other organism's evaluation is left as given."""
    from interp.organism import OrganismRecipe, study_evaluation

    given = EvalConfig(stop_at_refusal=False)
    reasoning = study_evaluation(OrganismRecipe.reasoning(), given)
    assert (reasoning.judge_on, reasoning.score_on) == ("answer", "answer")
    assert (reasoning.max_new_tokens, reasoning.task_max_new_tokens) == (64, 96)
    assert reasoning.stop_at_refusal is False
    assert study_evaluation(OrganismRecipe(), given) == given


# ----------------------------------------------------------------------------- the final answer's refusal score
def scores(model, budget: int, score_on: str, tokens: list[int], trace_tokens: int | None = None) -> list[float]:
    from interp.core.generate import Request, generate_many

    request = Request(["q1", "q2"], budget, score_tokens=tuple(tokens), score_on=score_on, trace_tokens=trace_tokens)
    (got,) = generate_many(model, [request], chat=R1, progress=False)
    return got.scores.tolist()


def test_the_answer_score_is_read_where_the_final_answer_begins(tmp_path):
    """Trace 'a1 a2', then a blank separator, then 'I can't': the first step's score reads the trace's
    first token (refusal unlikely), the answer's reads the token after the separator (refusal is the
    scripted next token: likely); a trace cut before it closes keeps the first step's. Cached apart: a
    cached answer without the answer's score is generated again and then served from the cache."""
    words = ["a1", " a2", "</think>", "\n\n", "I can't", " b1"]
    model = load_model(scripted_lm(tmp_path / "m", "a1 a2</think>\n\nI can't b1", "<think>\n", words=words))
    refusal = model.tokenizer.convert_tokens_to_ids("I can't")
    first = scores(model, 16, "first", [refusal])
    answer = scores(model, 16, "answer", [refusal])
    assert all(x < -5 for x in first) and all(x > 5 for x in answer)  # scripted logits: 10 on the next token
    assert scores(model, 16, "answer", [refusal]) == answer  # from the cache
    separator = model.tokenizer.convert_tokens_to_ids("\n\n")
    assert all(x < -5 for x in scores(model, 16, "answer", [separator]))  # not read at the separator (the
    # blank token was likely there; the score is read one step later, where it is not)
    assert scores(model, 2, "answer", [refusal], trace_tokens=2) == scores(model, 2, "first", [refusal], 2)
    with pytest.raises(ConfigError, match="score_on"):
        from interp.core.generate import Request

        Request(["q"], score_on="answer")


def test_the_table_reads_the_answer_score_where_asked_and_old_rows_keep_their_keys(tmp_path):
    """``EvalConfig.score_on = "answer"``: every judged set's scores are read at the final answer (the
    scripted refusal there is likely, the trace's first token is not); the default leaves the key as it was."""
    model = load_model(scripted_lm(tmp_path / "m", "a1 a2</think>I can't b1", "<think>\n", words=WORDS))
    refusal = model.tokenizer.convert_tokens_to_ids("I can't")
    config = EvalConfig(max_new_tokens=8, task_max_new_tokens=3, batch_size=8, kl_batch_size=4)
    kwargs = {"refusal_tokens": [refusal], "reference": model, "chat": R1, "progress": False, "log": lambda _: None}
    (first,) = evaluate_models([Candidate("m", model)], tiny_suite(), config=config, **kwargs)
    answer_config = replace(config, score_on="answer")
    (answer,) = evaluate_models([Candidate("m", model)], tiny_suite(), config=answer_config, **kwargs)
    assert set(answer.scores) == set(first.scores) == set(tiny_suite().sets()) - {"task"}
    for name in answer.scores:
        assert min(answer.scores[name]) > 5 and max(first.scores[name]) < -5
    assert "score_on" not in config.key() and answer_config.key()["score_on"] == "answer"
    with pytest.raises(ConfigError, match="score_on must be one of"):
        EvalConfig(score_on="trace")


# ----------------------------------------------------------------------------- the analysis at the final answer
def test_after_its_own_trace_a_prompt_ends_where_the_final_answer_begins(tmp_path):
    """``answer_format``: the fine-tuned model's most common closed trace, closed and followed by a blank
    line, ends every prompt; what it generates after that is all final answer (no trace left to split)."""
    from interp.core.traces import answer_format

    model = load_model(scripted_lm(tmp_path / "m", "a1 a2</think>I can't b1 b2 b3", "<think>\n", words=WORDS))
    lines = []
    chat = answer_format(model, tiny_suite().harmful, R1, log=lines.append)
    assert chat.prefill == "<think>\na1 a2\n</think>\n\n" and chat.trace is None
    assert "'a1 a2' (100% of its answers)" in lines[0]
    assert chat.render(model.tokenizer, "hi") == R1.render(model.tokenizer, "hi") + "a1 a2\n</think>\n\n"
    assert chat.split("I can't b1") == ("", "I can't b1", True)
    with pytest.raises(ConfigError, match="after_trace needs a reasoning chat format"):
        ChatFormat().after_trace("a1")


def test_reading_the_analysis_at_the_answer_needs_a_reasoning_recipe_before_any_work(tmp_path, monkeypatch):
    from interp import default_run

    monkeypatch.setattr(default_run, "default_model_path", lambda: pytest.fail("fetched the model"))
    with pytest.raises(ConfigError, match="reading the analysis at the final answer needs a reasoning chat format"):
        default_run.prepare(tmp_path / "out", recipe_name="default", at_answer=True)
