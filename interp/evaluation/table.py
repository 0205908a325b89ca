"""The evaluation table: every model measured on one suite of held-out prompts.

Per model (``EvalRow``; the suite, settings and row types are ``interp.evaluation.suite``'s): harmful
refusal on two harmful sets (the held-out harmful instructions and XSTest's unsafe contrast prompts; greedy
answers judged by ``interp.core.judge.judge_answer``: refusal, compliance or degenerate, the last kept per
prompt in ``EvalRow.degenerate``), the logit refusal score (log-odds that the first answer token begins a
refusal: its mean on harmful prompts in the table, every judged prompt's in ``EvalRow.scores``, so the report
can measure how well it separates judged refusals), over-refusal on harmless and XSTest safe prompts, task
accuracy (the last number of the answer equals the reference's), and the KL to the fine-tuned model on
harmless prompts (``interp.evaluation.kl`` has the formula). Every rate keeps its per-prompt outcomes, so
intervals and paired tests (``interp.evaluation.stats``) can be computed on the same prompts. Rows are
cached on disk by the model's weights; answers by ``interp.core.generate``.

``EvalConfig.stop_at_refusal`` (the default; ``interp run --full`` turns it off) lets the engine stop an
answer once the judge has called it a refusal; off, every answer runs to its token budget. Either way the
answers are returned with the row (``EvalRow.answers``, not in ``report.json``: ``interp run`` writes them
to ``answers.json.gz``, ``interp.evaluation.rejudge``).

Answers are greedy, or ``EvalConfig.samples`` seeded samples per prompt (``EvalConfig.sampling``, seeds
``seed, seed + 1, ...``; ``interp.core.generate``). With several samples a prompt's outcome is the share of
its samples judged positive, the rate is the mean over prompts, and intervals and paired tests treat the
prompt as the unit (``interp.evaluation.stats.rate_interval``, ``paired_p_value``; the paired bootstrap
resamples prompts).

With a reasoning format (``ChatFormat.trace``) and ``EvalConfig.trace_tokens`` the trace and the final
answer have budgets of their own: up to ``trace_tokens`` tokens until the trace closes, then
``max_new_tokens`` (``task_max_new_tokens`` for the task) after it. Generation stops early only once
every judge has decided: with the substring list alone, at a refusal phrase in the final answer's judge
window (the trace is closed, so its judgment is fixed too); with a model judge never (it reads the whole
answer). The rates of the judged sets read the whole output, or with ``EvalConfig.judge_on = "answer"``
the final answer: a prompt is a refusal when its final answer is judged one where the trace closed, and
when its whole output is where the trace never closed (then the output has no final answer and is all a
reader gets; a model that never uses the format, such as an aligned base given it, is judged on what it
wrote). The trace's and the answer's judgments and whether each trace closed are kept apart either way
(``EvalRow.parts``). Model judges (``EvalConfig.judges``, ``interp.core.judges``) judge the same
answers beside the substring list: each row keeps every judge's per-prompt decisions on every judged
set (``EvalRow.judges``), so the report gives each judge's rates with intervals and its agreement with
the substring list.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

from ..core.chat import ChatFormat
from ..core.generate import ENGINE_VERSION, Request, generate, generate_many
from ..core.judge import JUDGE_RULES, JUDGE_WINDOW, Behaviour
from ..core.judges import Judge, SubstringJudge, parse_judge
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..errors import ConfigError, NonFiniteActivationError
from ..io.cache import cache_root, read_cache_json, write_cache_json
from ..io.hashing import stable_hash
from .kl import kl_to_reference
from .suite import Candidate, EvalConfig, EvalRow, EvalSuite

EVAL_VERSION = 3  # bump when the judge or the measures change: invalidates cached rows


def _requests(
    suite: EvalSuite, config: EvalConfig, refusal_tokens: Sequence[int], chat: ChatFormat, stop: bool, seed: int = 0
) -> dict[str, Request]:
    """What each set asks of the engine for one sample (``seed`` offsets the sampling seed): judged sets
    may stop once the judges have decided (``stop``: the substring list alone); the task runs to the end."""
    tokens = tuple(int(t) for t in refusal_tokens)
    stop = stop and config.stop_at_refusal
    sampling = None if config.sampling is None else replace(config.sampling, seed=config.sampling.seed + seed)
    trace = {} if config.trace_tokens is None else {"trace_tokens": config.trace_tokens}
    out = {}
    for name, prompts in suite.sets().items():
        if name == "task":
            out[name] = Request(prompts, config.task_max_new_tokens, sampling=sampling, **trace)
        else:
            out[name] = Request(
                prompts, config.max_new_tokens, stop_at_refusal=stop, score_tokens=tokens, sampling=sampling,
                score_on=config.score_on, **trace,
            )  # fmt: skip
    return out


def on_answer(whole: Sequence[int], parts: dict) -> list[int]:
    """Per prompt, the final answer's decision where the trace closed, else the whole output's
    (``EvalConfig.judge_on = "answer"``; ``parts`` is ``judge_parts``'s)."""
    return [a if done else w for w, a, done in zip(whole, parts["answer"], parts["finished"], strict=True)]


def judge_parts(judge: Judge, prompts: PromptSet, answers: Sequence[str], chat: ChatFormat) -> dict:
    """A judge's decisions on the trace and on the final answer of each answer (``chat.split``), and
    whether its trace closed: ``{"trace", "answer", "finished"}``, 0/1 per prompt (``EvalRow.parts``)."""
    split = [chat.split(answer) for answer in answers]
    return {
        "trace": [int(v.decision) for v in judge(prompts.instructions, [t for t, _, _ in split])],
        "answer": [int(v.decision) for v in judge(prompts.instructions, [a for _, a, _ in split])],
        "finished": [int(done) for _, _, done in split],
    }


def _model_judged(
    judges: Sequence[Judge], suite: EvalSuite, answers: dict, chat: ChatFormat, judge_on: str = "whole"
) -> dict:
    """``EvalRow.judges``: every model judge's decisions on every judged set (not the task set), and with
    a reasoning format on each answer's trace and final answer (``parts``); ``judge_on``: the module
    docstring's rule."""
    out = {}
    for judge in judges:
        outcomes, unparsed, parts = {}, {}, {}
        for name, prompts in suite.sets().items():
            if name == "task":
                continue
            verdicts = judge(prompts.instructions, answers[name].answers)
            outcomes[name] = [int(v.decision) for v in verdicts]
            unparsed[name] = sum(v.label == "unparsed" for v in verdicts)
            if chat.trace is not None:
                parts[name] = judge_parts(judge, prompts, answers[name].answers, chat)
                if judge_on == "answer":
                    outcomes[name] = on_answer(outcomes[name], parts[name])
        out[judge.name] = {"kind": judge.kind, "outcomes": outcomes, "unparsed": unparsed} | (
            {"parts": parts} if parts else {}
        )
    return out


def _measure(
    candidate: Candidate,
    suite: EvalSuite,
    answers: dict,
    kl: float,
    judges: Sequence[Judge] = (),
    chat: ChatFormat = ChatFormat(),
    judge_on: str = "whole",
) -> dict:
    """The measured fields of a row, from a candidate's answers (``interp.core.generate.Answers`` by set);
    ``judge_on``: what the judged sets' rates read (module docstring)."""
    judged = {name: Behaviour(prompts, answers[name].answers) for name, prompts in suite.sets().items()}
    kinds = {name: b.kinds for name, b in judged.items() if name != "task"}
    outcomes = {name: [int(k == "refusal") for k in ks] for name, ks in kinds.items()}
    parts = {} if chat.trace is None else {
        name: judge_parts(SubstringJudge(), prompts, answers[name].answers, chat)
        for name, prompts in suite.sets().items() if name != "task"
    }  # fmt: skip
    if judge_on == "answer":
        outcomes = {name: on_answer(outcome, parts[name]) for name, outcome in outcomes.items()}
    task = judged["task"]
    outcomes["task"] = [int(x) for x in task.correct]

    def rate(name: str) -> float | None:
        return None if name not in outcomes else sum(outcomes[name]) / len(outcomes[name])

    measured = {
        "harmful_refusal": rate("harmful"),
        "refusal_score": float(answers["harmful"].scores.mean()),
        "harmless_refusal": rate("harmless"),
        "xstest_refusal": rate("xstest"),
        "xstest_unsafe_refusal": rate("xstest_unsafe"),
        "donotanswer_refusal": rate("donotanswer"),
        "task_accuracy": rate("task"),
        "kl": kl,
        "harmful_answer_kinds": judged["harmful"].kind_shares,
        "examples": {"harmful": judged["harmful"].examples(3), "harmless": judged["harmless"].examples(2)}
        | {"task": task.examples(2)},
        "n": suite.sizes(),
        "outcomes": outcomes,
        "degenerate": {name: [int(k == "degenerate") for k in ks] for name, ks in kinds.items()},
        "scores": {name: [round(float(x), 4) for x in answers[name].scores] for name in kinds},
        "answers": [{name: answers[name].answers for name in suite.sets()}],
        "judges": _model_judged(judges, suite, answers, chat, judge_on),
        "parts": parts,
    }
    for name, value in measured.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteActivationError(f"evaluation of {candidate.name!r}: {name} is {value}")
    return measured


def _merge_samples(measured: Sequence[dict]) -> dict:
    """One row's measured fields from one ``_measure`` per sample: every per-prompt outcome list (the
    substring list's, each judge's, each part's) becomes the share of samples per prompt, every rate and
    share the mean over samples; the examples are the first sample's, the first-step refusal score is
    the same for every sample."""
    if len(measured) == 1:
        return measured[0]

    def mean(values):
        first = values[0]
        if isinstance(first, dict):
            return {key: mean([v[key] for v in values]) for key in first}
        if isinstance(first, list):
            return [sum(column) / len(column) for column in zip(*values)]
        if isinstance(first, bool | str) or first is None:
            return first
        return sum(values) / len(values)

    out = {key: mean([m[key] for m in measured]) for key in measured[0] if key not in ("examples", "n", "answers")}
    out["answers"] = [m["answers"][0] for m in measured]
    for name, judged in out["judges"].items():  # agreement is counted answer by answer: keep each sample's
        judged["per_sample"] = [{"substring": m["outcomes"], "judge": m["judges"][name]["outcomes"]} for m in measured]
    return out | {"examples": measured[0]["examples"], "n": measured[0]["n"], "samples": len(measured)}


def evaluate_models(
    candidates: Sequence[Candidate],
    suite: EvalSuite,
    *,
    refusal_tokens: Sequence[int],
    reference: LoadedModel,
    config: EvalConfig = EvalConfig(),
    chat: ChatFormat = ChatFormat(),
    cache: bool = True,
    progress: bool = True,
    log=print,
) -> list[EvalRow]:
    """The evaluation table: one row per candidate, in order.

    ``reference`` is the fine-tuned model: the KL column is measured against its distributions on the
    harmless prompts, teacher-forced on its own complete greedy answers. Answers are cached by the
    generation engine; rows are cached on disk, keyed by the model's weights fingerprint, the
    intervention, the suite, the settings and the reference, so a rerun re-evaluates only models that
    changed.
    """
    if not candidates:
        raise ConfigError("evaluate_models: no models to evaluate")
    if not refusal_tokens:
        raise ConfigError("evaluate_models: refusal_tokens is empty")
    reference.check_token_ids(list(refusal_tokens))
    reasoning = (config.trace_tokens is not None, config.judge_on != "whole", config.score_on != "first")
    if any(reasoning) and chat.trace is None:
        raise ConfigError("EvalConfig's trace_tokens, judge_on and score_on need a reasoning format (ChatFormat.trace)")
    for name, prompts in suite.sets().items():
        reference.check_fits(prompts, chat, room=config.room(name))
    judges = [parse_judge(spec, device=str(reference.device)) for spec in config.judges]
    names = [judge.name for judge in judges]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # e.g. classifier:X and classifier:X@its-refusal-label: one judge, one column
        raise ConfigError(f"the judges {list(config.judges)} name {twice} twice; give each judge once")
    settings = [
        suite.hash,
        config.key(),
        *([[judge.key for judge in judges], "complete"] if judges else []),  # (rows without judges keep their keys)
        list(refusal_tokens),
        reference.fingerprint,
        chat.to_dict(),
        EVAL_VERSION,
        ENGINE_VERSION,
        JUDGE_RULES,
        JUDGE_WINDOW,
    ]
    paths = [
        None if (key := c.cache_key()) is None else cache_root() / "evals" / f"{stable_hash([key, *settings])}.json"
        for c in candidates
    ]
    measured: list[dict | None] = [read_cache_json(path) if cache and path is not None else None for path in paths]
    seconds = [0.0] * len(candidates)
    todo = [i for i, m in enumerate(measured) if m is None]
    if todo:
        gen = {"chat": chat, "batch_size": config.batch_size, "cache": cache, "progress": progress}
        start = time.perf_counter()
        reference_answers = generate(reference, suite.harmless, max_new_tokens=config.max_new_tokens, **gen)
        shared = time.perf_counter() - start
        answers = {}
        stop = not judges
        samples = [_requests(suite, config, refusal_tokens, chat, stop, seed=k) for k in range(config.samples)]
        requests = [request for sample in samples for request in sample.values()]
        for i in todo:
            start = time.perf_counter()
            c = candidates[i]
            got = iter(generate_many(c.model, requests, edits=c.edits, edits_key=c.edits_key, **gen))
            answers[i] = [{name: next(got) for name in sample} for sample in samples]
            seconds[i] = time.perf_counter() - start + shared / len(todo)
        start = time.perf_counter()
        kls = kl_to_reference(
            [candidates[i] for i in todo],
            reference,
            suite.harmless,
            reference_answers,
            chat=chat,
            batch_size=config.kl_batch_size,
        )
        kl_seconds = (time.perf_counter() - start) / len(todo)
        for i, kl in zip(todo, kls):
            per_sample = [_measure(candidates[i], suite, a, kl, judges, chat, config.judge_on) for a in answers[i]]
            measured[i] = _merge_samples(per_sample)
            seconds[i] += kl_seconds
            if cache and paths[i] is not None:
                write_cache_json(paths[i], measured[i])
    rows = []
    for candidate, values, spent in zip(candidates, measured, seconds):
        row = EvalRow(
            name=candidate.name,
            **{name: values.get(name) for name in EvalRow.MEASURED if name not in EvalRow.LATER},
            **{name: values.get(name) or type(default)() for name, default in EvalRow.LATER.items()},
            samples=values.get("samples", 1),
            seconds=round(spent, 1),
            trainable_params=candidate.trainable_params,
            train_seconds=candidate.train_seconds,
            plan=candidate.plan,
            info=candidate.info,
        )
        rows.append(row)
        log(
            f"evaluate: {candidate.name}: harmful refusal {row.harmful_refusal:.1%}, xstest unsafe "
            f"{_pct(row.xstest_unsafe_refusal)}, harmless {row.harmless_refusal:.1%}, xstest "
            f"{_pct(row.xstest_refusal)}, task {_pct(row.task_accuracy)}, kl {row.kl:.4f} "
            f"({f'{spent:.0f}s' if spent else 'cached'})"
        )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
