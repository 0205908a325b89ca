"""Greedy generation: the one engine behind the evaluation table, the organism's measurements and the
causal and steering checks.

**What it computes.** For each prompt, the greedy answer of the plain Hugging Face model (its own
attention, sdpa where available; never through a booted bridge), with residual-stream ``edits`` applied
as forward hooks on the decoder layers (``interp.core.bridge.intervene``): ``decode(argmax ...)`` up to
end-of-sequence or ``max_new_tokens``, special tokens dropped, stripped (unless the request says not to).

**How.** Every prompt of every request in a call is pooled into one queue sorted by token budget and
length and cut into batches of ``batch_size`` rows. The tokens every prompt starts with (the chat template's system
turn) are run once and their keys and values shared (``interp.core.kvcache``). A batch is prefilled once
and then decoded one token per step into a KV cache preallocated for its longest possible answer. A row
leaves the batch at end-of-sequence, at its token budget, or, for a request with ``stop_at_refusal``, as
soon as a refusal phrase lies inside the judge window of its answer so far (``interp.core.judge``): the
text so far is a prefix of the full answer, so the phrase stays where it is and the judgment (refusal)
cannot change. Such an answer is kept as far as it was generated.

**Reasoning formats.** With a chat format that names trace delimiters (``ChatFormat.trace``) a row
watches for the closing delimiter in its text; ``stop_at_refusal`` then looks for a refusal phrase in
the final answer only (the text after the closing delimiter: the trace's judgment is fixed once it has
closed, and the whole answer's too, since the phrase lies inside its judge window or the window was
already full). A request with ``trace_tokens`` budgets the parts apart: up to ``trace_tokens`` tokens
while the trace is open (a row whose trace reaches it ends there, with no final answer), then
``max_new_tokens`` after the closing delimiter. Finished rows leave the batch in
groups (each eviction copies the KV cache); until then their outputs are ignored.

**Sampling.** A request with ``temperature > 0`` samples instead (``Sampling``): each token from the
softmax of the logits divided by the temperature, restricted to the smallest set of tokens whose
probability reaches ``top_p`` (nucleus sampling). Each row draws from its own generator, seeded by the
request's seed and the prompt text, so a sample does not depend on which rows share its batch (up to
float rounding of the logits). Several samples per prompt are several requests with different seeds.

**Several processes.** Under ``accelerate launch`` each process decodes every N-th row of the sorted
queue and the answers are gathered in order (``interp.distributed``); every process returns all of them.

**Answer cache.** Answers are stored on disk under ``answers/`` keyed by the weights fingerprint, the
intervention (``edits_key``; edits without a key are never cached), the chat format and the token
budget, then by prompt. A complete answer serves every later request for that prompt; an answer stopped
at a refusal serves only requests that allow stopping, while the judge that stopped it is the one in
use. With ``score_tokens`` a request also
returns each prompt's logit refusal score (``interp.core.judge.refusal_log_odds``), read off the logits
of the first step, and cached beside the answer.

**The final answer's refusal score.** With a reasoning format, the first step's logits choose the
trace's first token, not the answer's. A request with ``score_on = "answer"`` reads the score where the
final answer begins instead: off the logits that chose the first token after the closing delimiter that
is not whitespace (the separator a model writes after ``</think>`` is skipped). Where the trace never
closed, the output has no final answer and its first step's score stands (the final-answer judgment reads
the whole output there too: ``interp.evaluation.table``). Such scores are cached under a key of their own;
a cached answer without one is generated again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..errors import ConfigError
from ..io.cache import cache_root, read_cache_json, write_cache_json
from ..io.hashing import stable_hash
from .bridge import Edit, intervene, last_logits
from .chat import ChatFormat, batches
from .judge import JUDGE_RULES, JUDGE_WINDOW, Behaviour, is_refusal, refusal_log_odds, refusal_token_ids
from .kvcache import SharedPrefix, kv_cache, prefixed_batch, shared_prefix
from .models import LoadedModel
from .prompts import PromptSet

ENGINE_VERSION = 2  # bump when answers would change: invalidates the answer cache
JUDGE_KEY = stable_hash([JUDGE_RULES, JUDGE_WINDOW])  # the judge that stops answers at a refusal
# Answers read per set to find the refusal tokens: 16 saw only the default base's "I", 128 also its "Sorry".
REFUSAL_PROBE_PROMPTS = 128
BATCH_SIZE = 128  # rows per batch: the fastest size measured by benchmarks/batch_size_bench.py
EVICT_FRACTION = 8  # finished rows leave the batch once they are an eighth of it (each eviction copies the cache)
SCORE_ON = ("first", "answer")  # where a refusal score is read (module docstring)


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding (module docstring): ``temperature`` > 0, nucleus ``top_p`` in (0, 1], ``seed``."""

    temperature: float = 0.6
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling needs temperature > 0 and top_p in (0, 1], got {self}")

    def generator(self, text: str) -> torch.Generator:
        """The generator of one row: seeded by the seed and the prompt text."""
        return torch.Generator().manual_seed(int(stable_hash([self.seed, text]), 16) % (2**63))

    def draw(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        """One token from ``logits`` ``[d_vocab]``."""
        probs = torch.softmax(logits.float().cpu() / self.temperature, -1)
        if self.top_p < 1:
            ordered, index = probs.sort(descending=True)
            keep = ordered.cumsum(-1) - ordered < self.top_p  # the smallest prefix reaching top_p
            probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
        return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class Request:
    """One prompt set to answer: its token budget, whether the judge may stop a row early, the refusal
    tokens whose log-odds to return (``None``: no score) and where (``score_on``: the first step, or with a
    reasoning format the final answer's first token: module docstring), ``sampling`` (``None``: greedy)
    and, with a reasoning format, the trace's own budget (``None``: ``max_new_tokens`` is the whole
    answer's; else ``max_new_tokens`` counts from the trace's end). ``strip=False`` keeps the answer's
    leading and trailing whitespace (a first token that is a newline, say); such answers are never cached."""

    prompts: PromptSet | Sequence[str]
    max_new_tokens: int = 48
    stop_at_refusal: bool = False
    score_tokens: tuple[int, ...] | None = None
    sampling: Sampling | None = None
    trace_tokens: int | None = None
    strip: bool = True
    score_on: str = "first"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or (self.trace_tokens is not None and self.trace_tokens < 1):
            raise ConfigError(f"token budgets must be >= 1, got {self.max_new_tokens} and {self.trace_tokens}")
        if self.score_tokens is not None and not self.score_tokens:
            raise ConfigError("score_tokens is empty")
        if self.score_on not in SCORE_ON or (self.score_on != "first" and self.score_tokens is None):
            raise ConfigError(f"score_on must be one of {SCORE_ON}, with score_tokens; got {self.score_on!r}")

    @property
    def instructions(self) -> list[str]:
        return list(self.prompts.instructions if isinstance(self.prompts, PromptSet) else self.prompts)


@dataclass
class Answers:
    """What one request got back: the answers in the prompts' order and, if asked, the refusal scores."""

    answers: list[str]
    scores: torch.Tensor | None = None  # [prompt] logit refusal log-odds (Request.score_on: where)


@dataclass
class _Row:
    """One prompt on its way through the engine."""

    request: int
    index: int
    text: str
    ids: list[int]
    budget: int
    stop_at_refusal: bool
    score_tokens: tuple[int, ...] | None
    tokens: list[int] = field(default_factory=list)  # generated so far
    answer: str | None = None
    stopped: bool = False  # stopped by the judge before end-of-sequence or the budget
    score: float | None = None
    sampling: Sampling | None = None
    generator: torch.Generator | None = None
    trace_budget: int | None = None  # the trace's own budget (Request.trace_tokens)
    closed: int | None = None  # tokens generated when the trace's closing delimiter was complete
    strip: bool = True  # Request.strip
    score_on: str = "first"  # Request.score_on
    answer_score: float | None = None  # score_on "answer": read where the final answer begins

    @property
    def limit(self) -> int:
        """The most tokens this row may generate from here on, as far as it is known."""
        if self.trace_budget is None:
            return self.budget
        return self.trace_budget if self.closed is None else self.closed + self.budget

    @property
    def score_key(self) -> str:
        """The score's key in the answer cache (the refusal tokens; an answer's score is marked so)."""
        key = ",".join(map(str, self.score_tokens))
        return key if self.score_on == "first" else f"answer:{key}"

    def final_score(self) -> float | None:
        """The score to return: the final answer's where it was read, else the first step's."""
        return self.answer_score if self.score_on == "answer" and self.answer_score is not None else self.score

    @property
    def budget_key(self) -> int | list[int]:
        """The budget as cache keys know it (one number unless the parts have their own)."""
        return self.budget if self.trace_budget is None else [self.trace_budget, self.budget]


# ----------------------------------------------------------------------------- one batch
@torch.no_grad()
def _decode_batch(model: LoadedModel, rows: list[_Row], prefix: SharedPrefix, close: str | None = None) -> None:
    """Answers for ``rows`` (one batch, ``[shared prefix][padding][rest]``), written into each row;
    ``close`` is the reasoning trace's closing delimiter, if the format has one."""
    tokenizer, device = model.tokenizer, model.device
    eos = tokenizer.eos_token_id
    ids, mask, positions = prefixed_batch([row.ids for row in rows], prefix.length, tokenizer.pad_token_id)
    room = max(row.budget + (row.trace_budget or 0) for row in rows)
    cache = kv_cache(mask.shape[1] + room, prefix, len(rows))
    logits = model.hf(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    logprobs = torch.log_softmax(logits.float(), -1)
    for j, row in enumerate(rows):
        if row.score_tokens is not None:
            row.score = float(refusal_log_odds(logprobs[j : j + 1], row.score_tokens)[0])
    present = list(range(len(rows)))  # rows in the batch tensors; finished ones leave in groups
    mask, last = mask.to(device), positions[:, -1].to(device)
    while True:
        for j, r in enumerate(present):
            row = rows[r]
            if row.score_on == "answer" and row.answer is None and _answer_not_begun(tokenizer, row):
                row.answer_score = float(refusal_log_odds(torch.log_softmax(logits[j : j + 1].float(), -1),
                                                          row.score_tokens)[0])  # fmt: skip
        next_tokens = logits.max(-1).indices  # argmax, first maximum on ties; 4x faster on bf16 logits
        for j, r in enumerate(present):
            row = rows[r]
            if row.sampling is not None and row.answer is None:
                next_tokens[j] = row.sampling.draw(logits[j], row.generator)
        for j, token in enumerate(next_tokens.tolist()):
            row = rows[present[j]]
            if row.answer is not None:  # finished earlier, still in the batch
                continue
            done = token == eos
            if not done:
                row.tokens.append(token)
                if close is not None and row.closed is None and _closes(tokenizer, row.tokens, close):
                    row.closed = len(row.tokens)
                done = len(row.tokens) >= row.limit
                if not done and row.stop_at_refusal and _decided(tokenizer, row, close):
                    done = row.stopped = True
            if done:
                row.answer = _text(tokenizer, row.tokens, row.strip)
        active = [j for j, r in enumerate(present) if rows[r].answer is None]
        if not active:
            return
        if len(present) - len(active) >= max(1, len(present) // EVICT_FRACTION):
            index = torch.tensor(active, device=device)
            cache.batch_select_indices(index)  # copies the cache: done for a group of rows at once
            mask, last, next_tokens = mask[index], last[index], next_tokens[index]
            present = [present[j] for j in active]
        mask = torch.cat([mask, mask.new_ones(len(present), 1)], dim=1)
        last = last + 1
        logits = model.hf(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=last[:, None],
            cache=cache,
            use_cache=True,
        ).logits[:, -1]


def _text(tokenizer, tokens: Sequence[int], strip: bool = True) -> str:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return text.strip() if strip else text


def _closes(tokenizer, tokens: Sequence[int], close: str) -> bool:
    """Whether the last tokens spell the closing delimiter (each token is at least one character, so
    ``len(close)`` tokens hold it)."""
    return close in tokenizer.decode(tokens[-len(close) :], skip_special_tokens=False)


def _answer_not_begun(tokenizer, row: _Row) -> bool:
    """Whether the trace has closed and nothing but whitespace follows it yet: the next token may be the
    final answer's first (``Request.score_on = "answer"``)."""
    return row.closed is not None and not _text(tokenizer, row.tokens[row.closed :])


def _decided(tokenizer, row: _Row, close: str | None) -> bool:
    """Whether the substring judge's refusal is decided: a refusal phrase in the answer's judge window,
    with a reasoning format in the final answer's (after the trace has closed)."""
    if close is None:
        return is_refusal(_text(tokenizer, row.tokens))
    return row.closed is not None and is_refusal(_text(tokenizer, row.tokens[row.closed :]))


# ----------------------------------------------------------------------------- the answer cache
class _AnswerStore:
    """Cached answers of one model under one intervention and chat format: a JSON file per token budget,
    ``{prompt: {"answer", "stopped", "scores": {refusal tokens: log-odds}}}``. A complete answer does
    not depend on the judge; one stopped at a refusal is marked with the judge that stopped it
    (``stopped``: ``JUDGE_KEY``) and serves only while that judge is the one in use."""

    def __init__(self, model: LoadedModel, edits_key: str, chat: ChatFormat) -> None:
        self.key = [model.fingerprint, edits_key, chat.to_dict(), ENGINE_VERSION]
        self.files: dict[int, dict] = {}

    def path(self, budget: int | list[int], sampling: Sampling | None = None):
        how = [] if sampling is None else [asdict(sampling)]  # greedy answers keep their keys
        return cache_root() / "answers" / f"{stable_hash([*self.key, budget, *how])}.json"

    def entries(self, budget: int | list[int], sampling: Sampling | None = None) -> dict:
        key = (str(budget), sampling)
        if key not in self.files:
            self.files[key] = read_cache_json(self.path(budget, sampling)) or {}
        return self.files[key]

    def get(self, row: _Row) -> dict | None:
        """The cached entry for ``row`` if it can stand in for generating it (a stopped answer only
        where stopping is allowed)."""
        entry = self.entries(row.budget_key, row.sampling).get(row.text)
        if entry is None or (entry["stopped"] and not (row.stop_at_refusal and entry["stopped"] == JUDGE_KEY)):
            return None
        return entry

    def save(self, rows: Sequence[_Row]) -> None:
        groups = {(str(row.budget_key), row.sampling): row.budget_key for row in rows}
        for (name, sampling), budget in sorted(groups.items(), key=repr):
            entries = self.entries(budget, sampling)
            for row in rows:
                if (str(row.budget_key), row.sampling) != (name, sampling):
                    continue
                old = entries.get(row.text)
                scores = dict(old["scores"]) if old is not None and old["answer"] == row.answer else {}
                if row.score is not None:
                    scores[_score_key(row.score_tokens)] = row.score
                if row.score_on == "answer":
                    scores[row.score_key] = row.answer_score  # None: the trace never closed
                stopped = JUDGE_KEY if row.stopped else False
                entries[row.text] = {"answer": row.answer, "stopped": stopped, "scores": scores}
            write_cache_json(self.path(budget, sampling), entries)


def _score_key(tokens: Sequence[int]) -> str:
    return ",".join(map(str, tokens))


# ----------------------------------------------------------------------------- the engine
def generate_many(
    model: LoadedModel,
    requests: Sequence[Request],
    *,
    chat: ChatFormat = ChatFormat(),
    edits: Mapping[int, Edit] | None = None,
    edits_key: str | None = None,
    batch_size: int = BATCH_SIZE,
    cache: bool = True,
    progress: bool = True,
) -> list[Answers]:
    """Answers to every request (greedy, or sampled where a request says so), all prompts pooled into
    length-sorted batches (see the module docstring). ``edits`` change the residual stream after the
    given blocks at every step; give them an ``edits_key`` (any string that identifies them) to cache
    their answers."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    rows: list[_Row] = []
    for r, request in enumerate(requests):
        instructions = request.instructions
        if not instructions:
            raise ConfigError(f"request {r} has no prompts")
        for i, (text, ids) in enumerate(zip(instructions, chat.encode(model.tokenizer, instructions))):
            row = _Row(r, i, text, ids, request.max_new_tokens, request.stop_at_refusal, request.score_tokens)
            row.trace_budget, row.strip, row.score_on = request.trace_tokens, request.strip, request.score_on
            if request.sampling is not None:
                row.sampling, row.generator = request.sampling, request.sampling.generator(text)
            rows.append(row)
    store = _AnswerStore(model, edits_key if edits else "", chat) if cache and (not edits or edits_key) else None
    to_generate, to_score = [], []
    for row in rows:
        entry = None if store is None or not row.strip else store.get(row)
        if entry is None:
            to_generate.append(row)
            continue
        if row.score_on == "answer" and row.score_key not in entry["scores"]:
            to_generate.append(row)  # the final answer's score is read while generating
            continue
        row.answer, row.stopped = entry["answer"], bool(entry["stopped"])
        if row.score_tokens is not None:
            row.score = entry["scores"].get(_score_key(row.score_tokens))
            row.answer_score = entry["scores"].get(row.score_key) if row.score_on == "answer" else None
            if row.score is None:
                to_score.append(row)
    with intervene(model.hf, edits or {}):
        _score_first_step(model, to_score, batch_size)
        prefix = shared_prefix(model.hf, [row.ids for row in to_generate])
        order = sorted(to_generate, key=lambda row: (row.budget + (row.trace_budget or 0), len(row.ids)))
        mine = distributed.split(order)  # this process's share when several run (interp.distributed)
        chunks = [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]  # similar budgets together
        close = chat.trace[1] if chat.trace is not None else None
        for chunk in tqdm(chunks, desc=f"generate {model.name}", disable=not progress or not chunks):
            _decode_batch(model, chunk, prefix, close)
        done = distributed.gather([(row.answer, row.stopped, row.score, row.answer_score) for row in mine], len(order))
        for row, (answer, stopped, score, answer_score) in zip(order, done):
            row.answer, row.stopped, row.score, row.answer_score = answer, stopped, score, answer_score
    if store is not None and (to_generate or to_score):
        store.save([row for row in to_generate + to_score if row.strip])
    out = [Answers([""] * len(request.instructions)) for request in requests]
    for r, request in enumerate(requests):
        if request.score_tokens is not None:
            out[r].scores = torch.empty(len(request.instructions))
    for row in rows:
        out[row.request].answers[row.index] = row.answer
        if row.score_tokens is not None:
            out[row.request].scores[row.index] = row.final_score()
    return out


def _score_first_step(model: LoadedModel, rows: list[_Row], batch_size: int) -> None:
    """The first-step refusal score of rows whose answer came from the cache without one."""
    for index, logprobs in _first_step_logprobs(model, [row.ids for row in rows], batch_size):
        for j, i in enumerate(index):
            rows[i].score = float(refusal_log_odds(logprobs[j : j + 1], rows[i].score_tokens)[0])


def _first_step_logprobs(model: LoadedModel, seqs: Sequence[Sequence[int]], batch_size: int):
    """``(rows, log-probabilities [row, d_vocab])`` of the next token after each sequence, batch by batch
    (a prefill-only forward)."""
    for batch in batches(seqs, batch_size, model.tokenizer.pad_token_id):
        yield batch.index, torch.log_softmax(last_logits(model.hf, batch.to(model.device)), -1)


def generate(
    model: LoadedModel,
    prompts: PromptSet | Sequence[str],
    *,
    chat: ChatFormat = ChatFormat(),
    max_new_tokens: int = 48,
    stop_at_refusal: bool = False,
    batch_size: int = BATCH_SIZE,
    edits: Mapping[int, Edit] | None = None,
    edits_key: str | None = None,
    cache: bool = True,
    progress: bool = True,
    strip: bool = True,
) -> list[str]:
    """Greedy completions of each prompt, in the prompts' order (one request of ``generate_many``);
    ``strip=False`` keeps their surrounding whitespace (``Request``)."""
    request = Request(prompts, max_new_tokens, stop_at_refusal, strip=strip)
    options = {"chat": chat, "edits": edits, "edits_key": edits_key, "batch_size": batch_size, "cache": cache}
    return generate_many(model, [request], progress=progress, **options)[0].answers


def behaviour(model: LoadedModel, prompts: PromptSet, *, max_new_tokens: int = 48, **kwargs) -> Behaviour:
    """Greedy answers to ``prompts``, judged: the judge may stop a refusal early (``generate``'s options)."""
    prompts.require_nonempty()
    kwargs.setdefault("stop_at_refusal", True)
    return Behaviour(prompts, generate(model, prompts, max_new_tokens=max_new_tokens, **kwargs))


# ----------------------------------------------------------------------------- logit refusal score
@torch.no_grad()
def refusal_scores(
    model: LoadedModel,
    prompts: PromptSet,
    token_ids: Sequence[int],
    *,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 32,
) -> torch.Tensor:
    """Refusal log-odds per prompt ``[prompt]``, in the prompts' order (a prefill-only forward)."""
    seqs = chat.encode(model.tokenizer, prompts.instructions)
    scores = torch.empty(len(seqs))
    for index, logprobs in _first_step_logprobs(model, seqs, batch_size):
        scores[index] = refusal_log_odds(logprobs, token_ids).cpu()
    return scores


def find_refusal_tokens(
    model: LoadedModel,
    harmful: PromptSet,
    harmless: PromptSet | None = None,
    *,
    n_prompts: int = REFUSAL_PROBE_PROMPTS,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    progress: bool = True,
) -> list[int]:
    """Refusal tokens read off ``model``'s own answers (long enough for the judge to read: ``max_new_tokens``)
    to the first ``n_prompts`` harmful prompts, without tokens that open more of its answers to the first
    ``n_prompts`` harmless ones (``interp.core.judge.refusal_token_ids``)."""
    requests = [Request(harmful.head(n_prompts), max_new_tokens)]
    if harmless is not None:
        requests.append(Request(harmless.head(n_prompts), max_new_tokens))
    answers = generate_many(model, requests, batch_size=batch_size, progress=progress)
    return refusal_token_ids(model.tokenizer, answers[0].answers, others=answers[1].answers if harmless else ())
