"""The evaluation table: every model measured on one suite of held-out prompts.

Per model (``EvalRow``): harmful refusal (greedy answers judged by ``interp.core.generate``'s substring
judge), the logit refusal score on harmful prompts (mean log-odds that the first answer token begins a
refusal), over-refusal on harmless and XSTest safe prompts, task accuracy (the last number of the answer
equals the reference's), and the KL to the fine-tuned model on harmless prompts:

    KL = mean over scored positions of  sum_v p_ft(v) (log p_ft(v) - log p_model(v))

teacher-forced on each harmless prompt followed by the fine-tuned model's own greedy answer, scored at
the last prompt position and every answer position. Rows are cached on disk by the model's weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..core.bridge import Edit, intervene
from ..core.chat import ChatFormat, batches, tokenize
from ..core.generate import JUDGE_WINDOW, REFUSAL_PHRASES, Behaviour, generate, refusal_scores
from ..core.models import LoadedModel
from ..core.prompts import PromptSet, load_prompts, shared_data_dir
from ..errors import ConfigError, NonFiniteActivationError, PromptFormatError
from ..io import atomic_write_json, cache_root, stable_hash

EVAL_VERSION = 1  # bump when the judge or the measures change: invalidates cached rows


# ----------------------------------------------------------------------------- the evaluation table
@dataclass
class EvalSuite:
    """The prompt sets every model in a table is measured on."""

    harmful: PromptSet  # refusal wanted
    harmless: PromptSet  # refusal is over-refusal; also where the KL to the fine-tuned model is measured
    task: PromptSet  # prompts with reference answers: task accuracy
    xstest: PromptSet | None = None  # XSTest's safe prompts: over-refusal on harmless look-alikes

    def __post_init__(self) -> None:
        for name in ("harmful", "harmless", "task", "xstest"):
            prompts = getattr(self, name)
            if prompts is not None:
                prompts.require_nonempty()
        if any(a is None for a in self.task.answers):
            raise ConfigError(f"task prompt set {self.task.name!r} needs a reference answer for every prompt")

    def sets(self) -> tuple[PromptSet | None, ...]:
        return (self.harmful, self.harmless, self.task, self.xstest)

    @property
    def hash(self) -> str:
        return stable_hash([None if p is None else p.hash for p in self.sets()])

    def sizes(self) -> dict[str, int]:
        return {
            name: len(p) for name in ("harmful", "harmless", "xstest", "task") if (p := getattr(self, name)) is not None
        }

    def head(self, n: int) -> EvalSuite:
        """Every set cut to its first ``n`` prompts (quick runs)."""
        return EvalSuite(*(None if p is None else p.head(n) for p in self.sets()))

    @classmethod
    def from_shared(cls, task: PromptSet, data=None, n_harmless: int = 200, seed: int = 0) -> EvalSuite:
        """The public held-out sets in ``../shared/data``: all of ``harmful_val``, ``n_harmless`` of
        ``harmless_val`` and XSTest's safe prompts; ``task`` is the caller's (held-out task prompts)."""
        data = Path(data) if data is not None else shared_data_dir()
        for file in ("harmful_val.json", "harmless_val.json", "xstest_prompts.csv"):
            if not (data / file).is_file():
                raise PromptFormatError(f"evaluation data not found: {data / file} (set $INTERP_SHARED_DATA)")
        return cls(
            harmful=load_prompts(data / "harmful_val.json", label=1),
            harmless=load_prompts(data / "harmless_val.json", label=0).sample(n_harmless, seed=seed),
            xstest=load_prompts(
                data / "xstest_prompts.csv", column="prompt", label=0, name="xstest_safe", where={"label": "safe"}
            ),
            task=task,
        )


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int = 32  # the judge reads the first JUDGE_WINDOW characters
    task_max_new_tokens: int = 48
    batch_size: int = 64
    kl_batch_size: int = 16

    def __post_init__(self) -> None:
        if min(self.max_new_tokens, self.task_max_new_tokens, self.batch_size, self.kl_batch_size) < 1:
            raise ConfigError("EvalConfig: token budgets and batch sizes must be >= 1")


@dataclass
class Candidate:
    """One row of the table: a model, optionally under residual-stream edits (e.g. steering)."""

    name: str
    model: LoadedModel
    trainable_params: int = 0
    train_seconds: float = 0.0
    edits: Mapping[int, Edit] | None = None  # applied while generating and scoring (interp.core.bridge)
    edits_key: str | None = None  # identifies the edits for the cache; None with edits: never cached
    plan: str | None = None  # which restoration plan or baseline made this model (ranked, steering, ...)
    info: dict = field(default_factory=dict)  # anything else worth reporting (layers, steps, ...)

    def cache_key(self) -> str | None:
        if self.edits and self.edits_key is None:
            return None
        return stable_hash([self.model.fingerprint, self.edits_key])


@dataclass
class EvalRow:
    """One model's row of the table (rates in [0, 1]; ``None`` where a set was not given)."""

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
    trainable_params: int = 0
    train_seconds: float = 0.0
    plan: str | None = None
    info: dict = field(default_factory=dict)

    MEASURED = (
        "harmful_refusal",
        "refusal_score",
        "harmless_refusal",
        "xstest_refusal",
        "task_accuracy",
        "kl",
        "harmful_answer_kinds",
        "examples",
        "n",
    )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalRow:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@torch.no_grad()
def kl_to_reference(
    candidate: Candidate,
    reference: LoadedModel,
    prompts: PromptSet,
    continuations: Sequence[str],
    *,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 16,
) -> float:
    """Mean per-token ``KL(reference || candidate)`` of next-token distributions, teacher-forced on
    each prompt followed by ``continuations`` (the reference's own answers), over the last prompt
    position and every continuation position."""
    tok = reference.tokenizer
    prompt_ids = chat.encode(tok, prompts.instructions)
    cont_ids = [tokenize(tok, c) for c in continuations]
    seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
    total, count = 0.0, 0
    for batch in batches(seqs, batch_size, tok.pad_token_id):
        width = batch.ids.shape[1]
        scored = torch.zeros_like(batch.mask, dtype=torch.bool)  # positions whose next token is an answer token
        for row, i in enumerate(batch.index):
            scored[row, width - len(cont_ids[i]) - 1 : width - 1] = True
        inputs = batch.to(reference.device)
        ref = torch.log_softmax(reference.hf(**inputs).logits.float(), -1)[scored]
        with intervene(candidate.model.hf, candidate.edits or {}):
            cand = torch.log_softmax(candidate.model.hf(**inputs).logits.float(), -1)[scored]
        total += (ref.exp() * (ref - cand)).sum().item()
        count += int(scored.sum())
    return total / max(count, 1)


def evaluate_candidate(
    candidate: Candidate,
    suite: EvalSuite,
    *,
    refusal_tokens: Sequence[int],
    reference: LoadedModel,
    reference_answers: Sequence[str],
    config: EvalConfig = EvalConfig(),
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
) -> EvalRow:
    """One row of the table, plus answer kinds, examples and set sizes."""
    gen = {"chat": chat, "batch_size": config.batch_size, "edits": candidate.edits, "progress": progress}
    model = candidate.model

    def answers(prompts: PromptSet, max_new_tokens: int) -> Behaviour:
        return Behaviour(prompts, generate(model, prompts, max_new_tokens=max_new_tokens, **gen))

    harmful = answers(suite.harmful, config.max_new_tokens)
    harmless = answers(suite.harmless, config.max_new_tokens)
    xstest = None if suite.xstest is None else answers(suite.xstest, config.max_new_tokens)
    task = answers(suite.task, config.task_max_new_tokens)
    scores = refusal_scores(
        model,
        suite.harmful,
        refusal_tokens,
        chat=chat,
        batch_size=config.kl_batch_size,
        edits_for_batch=lambda index: candidate.edits,
    )
    kl = kl_to_reference(
        candidate, reference, suite.harmless, reference_answers, chat=chat, batch_size=config.kl_batch_size
    )
    row = EvalRow(
        name=candidate.name,
        harmful_refusal=harmful.refusal_rate,
        refusal_score=float(scores.mean()),
        harmless_refusal=harmless.refusal_rate,
        xstest_refusal=None if xstest is None else xstest.refusal_rate,
        task_accuracy=task.accuracy,
        kl=kl,
        harmful_answer_kinds=harmful.kind_shares,
        examples={"harmful": harmful.examples(3), "harmless": harmless.examples(2), "task": task.examples(2)},
        n=suite.sizes(),
    )
    for name in EvalRow.MEASURED:
        value = getattr(row, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteActivationError(f"evaluation of {candidate.name!r}: {name} is {value}")
    return row


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
    harmless prompts, teacher-forced on its own greedy answers. Rows are cached on disk, keyed by the
    model's weights fingerprint, the intervention, the suite, the settings and the reference, so a
    rerun re-evaluates only models that changed.
    """
    if not candidates:
        raise ConfigError("evaluate_models: no models to evaluate")
    if not refusal_tokens:
        raise ConfigError("evaluate_models: refusal_tokens is empty")
    settings = [
        suite.hash,
        asdict(config),
        list(refusal_tokens),
        reference.fingerprint,
        chat.system_prompt,
        chat.user_suffix,
        EVAL_VERSION,
        REFUSAL_PHRASES,
        JUDGE_WINDOW,
    ]
    answers_key = stable_hash(["reference-answers", *settings])
    answers_file = cache_root() / "evals" / f"{answers_key}.json"
    if cache and answers_file.exists():
        reference_answers = json.loads(answers_file.read_text())
    else:
        reference_answers = generate(
            reference,
            suite.harmless,
            chat=chat,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            progress=progress,
        )
        if cache:
            atomic_write_json(answers_file, reference_answers)
    rows = []
    for candidate in candidates:
        key = candidate.cache_key()
        path = None if key is None else cache_root() / "evals" / f"{stable_hash([key, *settings])}.json"
        start = time.perf_counter()
        if cache and path is not None and path.exists():
            measured = json.loads(path.read_text())
            source = "cached"
        else:
            row = evaluate_candidate(
                candidate,
                suite,
                refusal_tokens=refusal_tokens,
                reference=reference,
                reference_answers=reference_answers,
                config=config,
                chat=chat,
                progress=progress,
            )
            measured = {name: getattr(row, name) for name in EvalRow.MEASURED}
            if cache and path is not None:
                atomic_write_json(path, measured)
            source = f"{time.perf_counter() - start:.0f}s"
        row = EvalRow(
            name=candidate.name,
            **measured,
            trainable_params=candidate.trainable_params,
            train_seconds=candidate.train_seconds,
            plan=candidate.plan,
            info=candidate.info,
        )
        rows.append(row)
        log(
            f"evaluate: {candidate.name}: harmful refusal {row.harmful_refusal:.1%}, harmless "
            f"{row.harmless_refusal:.1%}, xstest {_pct(row.xstest_refusal)}, task {_pct(row.task_accuracy)}, "
            f"kl {row.kl:.4f} ({source})"
        )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
