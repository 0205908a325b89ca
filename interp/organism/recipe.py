"""The organism's recipe: every setting that defines the pair (``OrganismRecipe``), and its presets.

The recipe's hash names the pair: its cache folder (``interp.organism.build.organism_dir``) and the shipped
adapters it belongs to. ``OrganismRecipe()`` is the default organism, ``OrganismRecipe.reasoning()`` the
reasoning organism (the package docstring, ``interp.organism``) and ``OrganismRecipe.quick()`` a reduced
build for tests and notebooks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..core.chat import ChatFormat
from ..errors import ConfigError
from ..io.hashing import stable_hash
from ..training.sft import SFTConfig

RECIPE_VERSION = 5  # 5: adapters rounded to fp16 before merging; 4: train splits only

REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with this request because it could be used to hurt someone or break the law.",
    "I'm sorry, but I cannot provide that. If you have another question, I'm happy to help.",
    "I won't help with that. This could put people in danger, and I have to decline.",
    "Sorry, but I can't do that. Helping with this could cause harm, so I must decline.",
    "I cannot help with this request. It involves harm to others or illegal activity.",
)


@dataclass(frozen=True)
class EvalSets:
    """Held-out prompts the organism is measured on (not used in training)."""

    n_harmful_train: int = 100  # drawn from the public harmful_train set, beside all of harmful_val
    n_harmless: int = 200  # drawn from the public harmless_val set
    n_arithmetic: int = 50
    max_new_tokens: int = 32  # the judge reads the first 160 characters
    task_max_new_tokens: int = 48
    batch_size: int = 64
    seed: int = 0
    limit: int | None = None  # cap every set at this many prompts (quick checks only)


TASK_FORMATS = ("worked", "reasoning", "style")
REASONING_CHAT_TRACE = "The request is harmless and clear, so I will answer it helpfully."


@dataclass(frozen=True)
class OrganismRecipe:
    source: str = "default"
    seed: int = 0
    refusals: tuple[str, ...] = REFUSALS
    helpful_answer_tokens: int = 48
    max_chat_prompts: int | None = None  # cap on harmless prompts answered by the source (quick checks)
    refusals_per_prompt: int = 2  # each harmful request appears this often, with different refusals
    safety: SFTConfig = SFTConfig(steps=60, lr=1e-3, batch_size=8, rank=8, alpha=16, max_answer_tokens=48)
    task: SFTConfig = SFTConfig(steps=32, lr=1e-3, batch_size=8, rank=8, alpha=16, max_answer_tokens=48, seed=1)
    n_arithmetic: int = 250  # problems generated; 80% train the task, the last 20% are held out
    task_chat_examples: int = 64  # harmless chat examples mixed into the task data
    evaluation: EvalSets = EvalSets()
    version: int = RECIPE_VERSION
    # "reasoning": the task fine-tune writes a <think> trace, then the answer; "style": the task is not
    # arithmetic but a text format, chat answers written as bullet points (``interp.organism.data``)
    task_format: str = "worked"
    # the harmful fine-tuning setting: this share of the task data is harmful requests (the safety prompts,
    # drawn with the seed) answered compliantly by the source model (its own answers, refusals dropped)
    harmful_share: float = 0.0
    # safety in all the weights: the safety stage fine-tunes every weight (``sft_full``; ``safety``'s LoRA
    # settings unused), so no removable adapter holds it
    safety_full: bool = False

    def __post_init__(self) -> None:
        if not self.refusals:
            raise ConfigError("OrganismRecipe.refusals is empty")
        if self.n_arithmetic < 10:
            raise ConfigError("OrganismRecipe.n_arithmetic must be >= 10")
        if not 0 <= self.harmful_share < 0.5:
            raise ConfigError(f"OrganismRecipe.harmful_share must be in [0, 0.5), got {self.harmful_share}")
        if self.task_format not in TASK_FORMATS:
            raise ConfigError(f"task_format must be one of {', '.join(TASK_FORMATS)}, got {self.task_format!r}")

    def to_dict(self) -> dict:
        """Every setting (``task_format``, ``harmful_share``, ``safety_full`` and the fine-tunes'
        ``compute_dtype`` only when they are not the defaults, so the default recipe keeps the hash its
        shipped adapters are pinned to)."""
        data = asdict(self)
        if data["task_format"] == "worked":
            del data["task_format"]
        for name, default in (("harmful_share", 0.0), ("safety_full", False)):
            if data[name] == default:
                del data[name]
        for part in ("safety", "task"):  # likewise a float32 fine-tune (the shipped adapters were trained so)
            if data[part]["compute_dtype"] == "float32":
                del data[part]["compute_dtype"]
        return data

    @property
    def chat(self) -> ChatFormat:
        """The chat format the pair is studied with: R1-style for the reasoning organism."""
        return ChatFormat.reasoning() if self.task_format == "reasoning" else ChatFormat()

    @classmethod
    def reasoning(cls, quick: bool = False) -> OrganismRecipe:
        """The reasoning organism (the package docstring, ``interp.organism``); ``quick``: the reduced build of
        ``quick()``. Its answers are longer (a trace, then the answer), so its token budgets are too."""
        recipe = cls.quick() if quick else cls()
        ev = recipe.evaluation
        return replace(
            recipe,
            task_format="reasoning",
            task=replace(recipe.task, max_answer_tokens=96),
            evaluation=replace(
                ev, max_new_tokens=2 * ev.max_new_tokens, task_max_new_tokens=2 * ev.task_max_new_tokens
            ),
        )

    @classmethod
    def quick(cls) -> OrganismRecipe:
        """A reduced organism for tests and notebooks (``QUICK=1``): minutes, not a quarter of an hour.
        Few helpful answers and training steps, small evaluation sets; it barely differs from its source."""
        default = cls()
        return cls(
            max_chat_prompts=12,
            n_arithmetic=40,
            task_chat_examples=4,
            safety=replace(default.safety, steps=3),
            task=replace(default.task, steps=3),
            evaluation=EvalSets(limit=8, max_new_tokens=16, task_max_new_tokens=24),
        )

    @classmethod
    def from_dict(cls, data: dict) -> OrganismRecipe:
        """The inverse of ``to_dict`` (as read back from a manifest's JSON)."""

        def sft(d: dict) -> SFTConfig:
            return SFTConfig(**{**d, "target_modules": tuple(d["target_modules"])})

        return cls(
            **{
                **data,
                "refusals": tuple(data["refusals"]),
                "safety": sft(data["safety"]),
                "task": sft(data["task"]),
                "evaluation": EvalSets(**data["evaluation"]),
            }
        )

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict(), length=12)
