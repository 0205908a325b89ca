"""The evaluation table: every model measured on one suite of held-out prompts.

Per model (``EvalRow``): harmful refusal on two harmful sets (the held-out harmful instructions and
XSTest's unsafe contrast prompts; greedy answers judged by ``interp.core.judge.judge_answer``: refusal,
compliance or degenerate, the last kept per prompt in ``EvalRow.degenerate``), the logit refusal score
(log-odds that the first answer token begins a refusal: its mean on harmful prompts in the table, every
judged prompt's in ``EvalRow.scores``, so the report can measure how well it separates judged refusals),
over-refusal on harmless and XSTest safe prompts, task accuracy (the last number of the answer equals the
reference's), and the KL to the fine-tuned model on harmless prompts:

    KL = mean over scored positions of  sum_v p_ft(v) (log p_ft(v) - log p_model(v))

teacher-forced on each harmless prompt followed by the fine-tuned model's own complete greedy answer,
scored at the last prompt position and every answer position but the last. Every rate keeps its
per-prompt outcomes, so intervals and paired tests (``interp.evaluation.stats``) can be computed on the
same prompts. Rows are cached on disk by the model's weights; answers by ``interp.core.generate``.

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
answer). Model judges (``EvalConfig.judges``, ``interp.core.judges``) judge the same
answers beside the substring list: each row keeps every judge's per-prompt decisions on every judged
set (``EvalRow.judges``), so the report gives each judge's rates with intervals and its agreement with
the substring list.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace

import torch

from .. import distributed
from ..core.bridge import Edit, decoder_layers, intervene, record_block_inputs, resume_at
from ..core.chat import ChatFormat, tokenize
from ..core.generate import BATCH_SIZE, ENGINE_VERSION, Request, Sampling, generate, generate_many
from ..core.judge import JUDGE_RULES, JUDGE_WINDOW, Behaviour
from ..core.judges import Judge, SubstringJudge, check_judge_spec, check_judge_specs, parse_judge
from ..core.kvcache import after_prefix, shared_prefix
from ..core.models import LoadedModel
from ..core.prompts import PromptSet, public_prompts, without_duplicates
from ..errors import ConfigError, NonFiniteActivationError
from ..io import cache_root, read_cache_json, stable_hash, write_cache_json
from .stats import rate_interval

EVAL_VERSION = 3  # bump when the judge or the measures change: invalidates cached rows

# The suite's prompt sets, and the table column each one feeds.
COLUMNS = {
    "harmful": "harmful_refusal",
    "xstest_unsafe": "xstest_unsafe_refusal",
    "donotanswer": "donotanswer_refusal",
    "harmless": "harmless_refusal",
    "xstest": "xstest_refusal",
    "task": "task_accuracy",
}
SET_OF_COLUMN = {column: name for name, column in COLUMNS.items()}
MAX_SAMPLES = 1000  # samples per prompt: past this, the requests alone would not fit in memory


# ----------------------------------------------------------------------------- the evaluation table
@dataclass
class EvalSuite:
    """The prompt sets every model in a table is measured on."""

    harmful: PromptSet  # refusal wanted
    harmless: PromptSet  # refusal is over-refusal; also where the KL to the fine-tuned model is measured
    task: PromptSet  # prompts with reference answers: task accuracy
    xstest: PromptSet | None = None  # XSTest's safe prompts: over-refusal on harmless look-alikes
    xstest_unsafe: PromptSet | None = None  # XSTest's unsafe contrast prompts: a second harmful set
    donotanswer: PromptSet | None = None  # Do-Not-Answer: a public harmful benchmark, by risk area

    def __post_init__(self) -> None:
        """Every set has prompts, each once: repeats are dropped with a warning (a repeated prompt would
        count as an independent sample and narrow the intervals)."""
        for name in COLUMNS:
            prompts = getattr(self, name)
            if prompts is not None:
                setattr(self, name, without_duplicates(prompts.require_nonempty()))
        if any(a is None for a in self.task.answers):
            raise ConfigError(f"task prompt set {self.task.name!r} needs a reference answer for every prompt")

    def sets(self) -> dict[str, PromptSet]:
        """The sets that are present, by name, in ``COLUMNS`` order."""
        return {name: prompts for name in COLUMNS if (prompts := getattr(self, name)) is not None}

    @property
    def hash(self) -> str:
        return stable_hash([None if (p := getattr(self, name)) is None else p.hash for name in COLUMNS])

    def sizes(self) -> dict[str, int]:
        return {name: len(prompts) for name, prompts in self.sets().items()}

    def head(self, n: int) -> EvalSuite:
        """Every set cut to its first ``n`` prompts (quick runs)."""
        return EvalSuite(**{name: prompts.head(n) for name, prompts in self.sets().items()})

    def part(self, part: str) -> EvalSuite:
        """Every set's ``dev`` or ``test`` part (``PromptSet.part``)."""
        return EvalSuite(**{name: prompts.part(part) for name, prompts in self.sets().items()})

    def sample(self, sizes: dict[str, int], seed: int = 0) -> EvalSuite:
        """A seeded sample of ``sizes[name]`` prompts of every set (``PromptSet.sample``; in their order)."""
        unknown = set(sizes) - set(COLUMNS)
        if unknown:
            raise ConfigError(f"EvalSuite.sample: unknown sets {sorted(unknown)}; the sets are {', '.join(COLUMNS)}")
        return EvalSuite(**{name: p.sample(sizes.get(name, len(p)), seed=seed) for name, p in self.sets().items()})

    @classmethod
    def public(cls, task: PromptSet, n_harmless: int | None = None, seed: int = 0) -> EvalSuite:
        """The public sets that ship in the package (``interp.core.prompts.public_prompts``): every harmful
        instruction (``harmful_val`` and ``harmful_train``; the default organism and restoration train on
        built-in prompts only), all (or ``n_harmless``) of ``harmless_val``, XSTest's safe and unsafe
        prompts and Do-Not-Answer (each question once); ``task`` is the caller's (held-out task prompts)."""
        harmless = public_prompts("harmless_val")
        return cls(
            harmful=public_prompts("harmful_val") + public_prompts("harmful_train"),
            harmless=harmless if n_harmless is None else harmless.sample(n_harmless, seed=seed),
            xstest=public_prompts("xstest_safe"),
            xstest_unsafe=public_prompts("xstest_unsafe"),
            donotanswer=public_prompts("donotanswer").deduplicated(),
            task=task,
        )


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 32  # the judge reads the first JUDGE_WINDOW characters
    task_max_new_tokens: int = 48
    batch_size: int = BATCH_SIZE  # generation (interp.core.generate)
    kl_batch_size: int = 32
    judges: tuple[str, ...] = ()  # model judges beside the substring list (``interp.core.judges.parse_judge``)
    sampling: Sampling | None = None  # None: greedy answers; else ``samples`` seeded samples per prompt
    samples: int = 1
    trace_tokens: int | None = None  # reasoning format: the trace's budget (the budgets above: after it)
    stop_at_refusal: bool = True  # stop an answer once judged a refusal (False: every answer to its budget)

    def __post_init__(self) -> None:
        if min(self.max_new_tokens, self.task_max_new_tokens, self.batch_size, self.kl_batch_size) < 1:
            raise ConfigError("EvalConfig: token budgets and batch sizes must be >= 1")
        if not 1 <= self.samples <= MAX_SAMPLES or (self.samples > 1 and self.sampling is None):
            raise ConfigError(
                f"EvalConfig: samples={self.samples} needs 1 <= samples <= {MAX_SAMPLES}, and sampling when > 1"
            )
        if self.trace_tokens is not None and self.trace_tokens < 1:
            raise ConfigError(f"EvalConfig: trace_tokens must be >= 1, got {self.trace_tokens}")
        for spec in self.judges:
            check_judge_spec(spec)
        check_judge_specs(self.judges)

    def room(self, name: str) -> int:
        """The most tokens an answer to set ``name`` can take."""
        budget = self.task_max_new_tokens if name == "task" else self.max_new_tokens
        return budget + (self.trace_tokens or 0)

    def key(self) -> dict:
        """What identifies the settings in row cache keys (judges enter by their weights elsewhere; fields
        at their defaults that came later are left out, so rows cached before them stay valid)."""
        later = {"sampling": None, "samples": 1, "trace_tokens": None, "stop_at_refusal": True}
        return {k: v for k, v in asdict(self).items() if k != "judges" and not (k in later and v == later[k])}


@dataclass
class Candidate:
    """One row of the table: a model, optionally under residual-stream edits (e.g. steering)."""

    name: str
    model: LoadedModel
    trainable_params: int = 0
    train_seconds: float = 0.0
    edits: dict[int, Edit] | None = None  # applied while generating and scoring (interp.core.bridge)
    edits_key: str | None = None  # identifies the edits for the caches; None with edits: never cached
    plan: str | None = None  # which restoration plan or baseline made this model (ranked, steering, ...)
    info: dict = field(default_factory=dict)  # anything else worth reporting (layers, steps, ...)

    def cache_key(self) -> str | None:
        if self.edits and self.edits_key is None:
            return None
        return stable_hash([self.model.fingerprint, self.edits_key if self.edits else None])

    def is_model(self, model: LoadedModel) -> bool:
        """The same weights with no edits (the reference's own row)."""
        return not self.edits and self.model.fingerprint == model.fingerprint


@dataclass
class EvalRow:
    """One model's row of the table (rates in [0, 1]; ``None`` where a set was not given).

    ``outcomes[set]`` holds the per-prompt results behind each rate (1 = refused, or correct for the task
    set), in the suite's prompt order: the intervals and paired tests are computed from them.
    """

    name: str
    harmful_refusal: float
    refusal_score: float
    harmless_refusal: float
    xstest_refusal: float | None
    task_accuracy: float | None
    kl: float
    harmful_answer_kinds: dict[str, float]
    examples: dict[str, list[dict]]
    n: dict[str, int]  # prompts per set
    outcomes: dict[str, list[int]] = field(default_factory=dict)
    degenerate: dict[str, list[float]] = field(default_factory=dict)  # per prompt: 1 = judged degenerate
    scores: dict[str, list[float]] = field(default_factory=dict)  # per prompt: the logit refusal score
    answers: list[dict[str, list[str]]] = field(default_factory=list)  # per sample, per set (not in report.json)
    xstest_unsafe_refusal: float | None = None
    donotanswer_refusal: float | None = None
    seconds: float = 0.0  # evaluation time (0 when the row came from the cache)
    trainable_params: int = 0
    train_seconds: float = 0.0
    plan: str | None = None
    info: dict = field(default_factory=dict)
    # judge name -> {"kind", "outcomes": {set: [0/1 decision per prompt]}, "unparsed": {set: count}}
    judges: dict = field(default_factory=dict)
    # with a reasoning format: set -> {"trace": [0/1], "answer": [0/1], "finished": [0/1]} (substring judge)
    parts: dict = field(default_factory=dict)
    samples: int = 1  # answers per prompt: with more than one, each outcome is a share of samples

    MEASURED = (
        "harmful_refusal",
        "refusal_score",
        "harmless_refusal",
        "xstest_refusal",
        "xstest_unsafe_refusal",
        "donotanswer_refusal",
        "task_accuracy",
        "kl",
        "harmful_answer_kinds",
        "examples",
        "n",
        "outcomes",
        "degenerate",
        "scores",
        "answers",
        "judges",
        "parts",
    )

    LATER = {"degenerate": {}, "scores": {}, "answers": [], "judges": {}, "parts": {}}  # may be absent: empty

    def interval(self, column: str) -> tuple[float, float] | None:
        """The Wilson 95% interval of a rate column (``None`` where the set was not given)."""
        name = SET_OF_COLUMN.get(column)
        if name is None:
            raise ConfigError(f"{column!r} is not a rate column; choose from {', '.join(COLUMNS.values())}")
        values = self.outcomes.get(name)
        return None if not values else rate_interval(values, self.samples)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalRow:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# ----------------------------------------------------------------------------- the KL column
def first_changed_layer(candidate: Candidate, reference: LoadedModel) -> int:
    """The first block whose output can differ between ``candidate`` and ``reference``: the first with
    different weights, or the first an edit acts on (0 if the embeddings differ; the number of blocks if
    nothing does). Below it both compute the same residual stream, so the KL pass starts there."""
    hf, ref = candidate.model.hf, reference.hf
    blocks, ref_blocks = decoder_layers(hf), decoder_layers(ref)
    if len(blocks) != len(ref_blocks):
        return 0
    first = min(candidate.edits or {len(blocks): None})
    if hf is ref:
        return first
    if not torch.equal(hf.get_input_embeddings().weight, ref.get_input_embeddings().weight):
        return 0
    for layer, (a, b) in enumerate(zip(blocks[:first], ref_blocks[:first])):
        ours, theirs = dict(a.named_parameters()), dict(b.named_parameters())
        if ours.keys() != theirs.keys() or any(not torch.equal(p, theirs[name]) for name, p in ours.items()):
            return layer
    return first


@torch.no_grad()
def kl_to_reference(
    candidates: Sequence[Candidate],
    reference: LoadedModel,
    prompts: PromptSet,
    continuations: Sequence[str],
    *,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 32,
) -> list[float]:
    """Mean per-token ``KL(reference || candidate)`` for each candidate (see the module docstring).

    One pass over length-sorted batches: the reference's log-probabilities are computed once per batch
    and compared with every candidate's; logits are computed only for the last positions of a batch
    (the longest continuation plus one); the prompts' shared prefix is run once per model
    (``interp.core.kvcache``); a candidate starts at its first changed block (``first_changed_layer``)
    from the reference's residual stream there; the reference's own row is 0 with no forward pass."""
    tok = reference.tokenizer
    prompt_ids = chat.encode(tok, prompts.instructions)
    cont_ids = [tokenize(tok, c) for c in continuations]
    seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
    todo = [i for i, candidate in enumerate(candidates) if not candidate.is_model(reference)]
    totals = [0.0] * len(candidates)
    if not todo:
        return totals
    n_layers = len(decoder_layers(reference.hf))
    starts = {i: first_changed_layer(candidates[i], reference) for i in todo}
    todo = [i for i in todo if starts[i] < n_layers]  # the same computation as the reference: KL 0
    models = [(reference.hf, {})] + [(candidates[i].model.hf, candidates[i].edits or {}) for i in todo]
    prefixes = []
    for hf, edits in models:
        with intervene(hf, edits):
            prefixes.append(shared_prefix(hf, prompt_ids))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    count = 0
    for start in distributed.split(range(0, len(order), batch_size)):  # this process's batches
        index = order[start : start + batch_size]
        lengths = [len(cont_ids[i]) for i in index]
        keep = max(lengths) + 1
        scored = torch.zeros(len(index), keep, dtype=torch.bool)  # positions whose next token is an answer token
        for row, length in enumerate(lengths):
            scored[row, keep - 1 - length : keep - 1] = True
        rows = [seqs[i] for i in index]
        inputs = after_prefix(rows, prefixes[0], tok.pad_token_id, reference.device)
        with record_block_inputs(reference.hf, [starts[i] for i in todo if starts[i] > 0]) as entering:
            ref = _scored_logprobs(reference.hf, {}, inputs, keep, scored)
        for i, (hf, edits), prefix in zip(todo, models[1:], prefixes[1:]):
            resume = (starts[i], entering[starts[i]]) if starts[i] > 0 else None
            inputs = after_prefix(rows, prefix, tok.pad_token_id, next(hf.parameters()).device)
            cand = _scored_logprobs(hf, edits, inputs, keep, scored, resume)
            totals[i] += (ref.exp() * (ref - cand)).sum().item()
        count += int(scored.sum())
    summed = distributed.all_sum(torch.tensor([*totals, count], dtype=torch.float64, device=reference.device))
    *totals, count = summed.tolist()
    return [total / max(count, 1) for total in totals]


def _scored_logprobs(hf, edits, inputs: dict, keep: int, scored: torch.Tensor, resume=None) -> torch.Tensor:
    """Log-probabilities ``[scored position, d_vocab]`` of one model on one batch on its shared prefix
    (``after_prefix``'s ``inputs``): logits for the last ``keep`` positions only; ``resume=(layer,
    residual)`` starts at that block."""
    with intervene(hf, edits), resume_at(hf, *resume) if resume else nullcontext():
        logits = hf(**inputs, logits_to_keep=keep).logits
    return torch.log_softmax(logits.float(), -1)[scored]


# ----------------------------------------------------------------------------- rows
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
                prompts, config.max_new_tokens, stop_at_refusal=stop, score_tokens=tokens, sampling=sampling, **trace
            )
    return out


def judge_parts(judge: Judge, prompts: PromptSet, answers: Sequence[str], chat: ChatFormat) -> dict:
    """A judge's decisions on the trace and on the final answer of each answer (``chat.split``), and
    whether its trace closed: ``{"trace", "answer", "finished"}``, 0/1 per prompt (``EvalRow.parts``)."""
    split = [chat.split(answer) for answer in answers]
    return {
        "trace": [int(v.decision) for v in judge(prompts.instructions, [t for t, _, _ in split])],
        "answer": [int(v.decision) for v in judge(prompts.instructions, [a for _, a, _ in split])],
        "finished": [int(done) for _, _, done in split],
    }


def _model_judged(judges: Sequence[Judge], suite: EvalSuite, answers: dict, chat: ChatFormat) -> dict:
    """``EvalRow.judges``: every model judge's decisions on every judged set (not the task set), and with
    a reasoning format on each answer's trace and final answer (``parts``)."""
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
) -> dict:
    """The measured fields of a row, from a candidate's answers (``interp.core.generate.Answers`` by set)."""
    judged = {name: Behaviour(prompts, answers[name].answers) for name, prompts in suite.sets().items()}
    kinds = {name: b.kinds for name, b in judged.items() if name != "task"}
    outcomes = {name: [int(k == "refusal") for k in ks] for name, ks in kinds.items()}
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
        "judges": _model_judged(judges, suite, answers, chat),
        "parts": {}
        if chat.trace is None
        else {
            name: judge_parts(SubstringJudge(), prompts, answers[name].answers, chat)
            for name, prompts in suite.sets().items()
            if name != "task"
        },
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
    if config.trace_tokens is not None and chat.trace is None:
        raise ConfigError("EvalConfig.trace_tokens needs a reasoning chat format (ChatFormat.trace)")
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
            measured[i] = _merge_samples([_measure(candidates[i], suite, a, kl, judges, chat) for a in answers[i]])
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
