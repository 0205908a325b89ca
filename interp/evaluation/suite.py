"""What the evaluation table is made of: the prompt sets every model is measured on (``EvalSuite``, each
set feeding one column: ``COLUMNS``), the settings (``EvalConfig``), the models to measure (``Candidate``)
and each model's row (``EvalRow``). The table itself is ``interp.evaluation.table.evaluate_models``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..core.bridge import Edit
from ..core.generate import BATCH_SIZE, SCORE_ON, Sampling
from ..core.judges import check_judge_spec, check_judge_specs
from ..core.models import LoadedModel
from ..core.prompts import PromptSet, public_prompts, without_duplicates
from ..errors import ConfigError
from ..io.hashing import stable_hash
from .stats import rate_interval

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


JUDGE_ON = ("whole", "answer")


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
    # reasoning format: what the judged sets' rates read, the whole output or the final answer ("answer":
    # after the trace where it closed, the whole output where it never did; interp.evaluation.table)
    judge_on: str = "whole"
    # reasoning format: where the refusal score is read, the first step or the final answer's first token
    # ("answer": interp.core.generate, "The final answer's refusal score")
    score_on: str = "first"

    def __post_init__(self) -> None:
        if min(self.max_new_tokens, self.task_max_new_tokens, self.batch_size, self.kl_batch_size) < 1:
            raise ConfigError("EvalConfig: token budgets and batch sizes must be >= 1")
        if not 1 <= self.samples <= MAX_SAMPLES or (self.samples > 1 and self.sampling is None):
            raise ConfigError(
                f"EvalConfig: samples={self.samples} needs 1 <= samples <= {MAX_SAMPLES}, and sampling when > 1"
            )
        if self.judge_on not in JUDGE_ON:
            raise ConfigError(f"EvalConfig: judge_on must be one of {JUDGE_ON}, got {self.judge_on!r}")
        if self.score_on not in SCORE_ON:
            raise ConfigError(f"EvalConfig: score_on must be one of {SCORE_ON}, got {self.score_on!r}")
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
        later = {
            "sampling": None, "samples": 1, "trace_tokens": None, "stop_at_refusal": True, "judge_on": "whole",
            "score_on": "first",
        }  # fmt: skip
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

    def saved(self) -> dict:
        """The row as result files keep it: everything but the answers and examples (``from_saved``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("answers", "examples")}

    @classmethod
    def from_saved(cls, data: dict) -> EvalRow:
        return cls.from_dict({"examples": {}} | data)
