"""The embedded default pair: a model organism of safety lost to benign fine-tuning.

SmolLM2-135M-Instruct barely refuses, so the default pair is built from it, reproducibly:

1. ``base``: safety tuning. LoRA, merged, on the built-in harmful requests answered by refusals
   (each twice, with different phrasings) and the built-in harmless and short general requests answered by the source
   model itself (its own greedy answers, generated first, with any refusal among them dropped), so
   that helpfulness is kept and short everyday requests are not over-refused.
2. ``finetuned``: the base plus a benign task fine-tune. LoRA, merged, on arithmetic word problems with
   worked answers, mixed with harmless chat answered by the source model (no refusals, no harmful
   data), so that the model keeps its chat format and its lost refusals turn into real compliance
   rather than a collapse into "Step 1: ...".

Both are saved as Hugging Face folders under ``$INTERP_CACHE/organism/<recipe hash>/`` with a
``manifest.json`` (recipe, hash, seeds, versions, times and the measured behaviour). The same recipe
loads from the cache. This stage is also where the names ``organism:base`` / ``organism:finetuned``
are resolved (``resolve_model_name``): loading a model never trains one.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import torch

from .core.generate import Request, behaviour, generate_many
from .core.judge import Behaviour, is_refusal
from .core.models import LoadedModel, ModelPair, load_model
from .core.prompts import (
    HARMFUL,
    PromptSet,
    arithmetic_prompts,
    general_prompts,
    harmful_prompts,
    harmless_prompts,
    load_prompts,
    shared_data_dir,
)
from .core.sources import ORGANISM_PREFIX, save_hf_folder
from .errors import ConfigError, ModelLoadError
from .evaluation.table import EvalSuite
from .io import atomic_dir, atomic_write_json, cache_root, stable_hash
from .training.sft import Example, SFTConfig, sft_lora

RECIPE_VERSION = 4  # 4: trains on the train splits only (built-in val sets and val problems held out)

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

    n_harmful_train: int = 100  # drawn from ../shared/data/harmful_train.json, beside all of harmful_val
    n_harmless: int = 200  # drawn from ../shared/data/harmless_val.json
    n_arithmetic: int = 50
    max_new_tokens: int = 32  # the judge reads the first 160 characters
    task_max_new_tokens: int = 48
    batch_size: int = 64
    seed: int = 0
    limit: int | None = None  # cap every set at this many prompts (quick checks only)


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

    def __post_init__(self) -> None:
        if not self.refusals:
            raise ConfigError("OrganismRecipe.refusals is empty")
        if self.n_arithmetic < 10:
            raise ConfigError("OrganismRecipe.n_arithmetic must be >= 10")

    def to_dict(self) -> dict:
        return asdict(self)

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


def organism_dir(recipe: OrganismRecipe = OrganismRecipe()) -> Path:
    return cache_root() / "organism" / recipe.hash


# ----------------------------------------------------------------------------- data
def eval_sets(recipe: OrganismRecipe) -> dict[str, PromptSet]:
    """Harmful, harmless and arithmetic evaluation prompts (shared data when present, else built-in val)."""
    ev = recipe.evaluation
    data = shared_data_dir()
    if (data / "harmful_val.json").exists():
        harmful = load_prompts(data / "harmful_val.json", label=HARMFUL) + load_prompts(
            data / "harmful_train.json", label=HARMFUL
        ).sample(ev.n_harmful_train, seed=ev.seed)
        harmless = load_prompts(data / "harmless_val.json", label=0).sample(ev.n_harmless, seed=ev.seed)
    else:
        harmful, harmless = harmful_prompts("val"), harmless_prompts("val")
    arithmetic = held_out_problems(recipe, ev.n_arithmetic)
    sets = {"harmful": harmful, "harmless": harmless, "arithmetic": arithmetic}
    if ev.limit is not None:
        sets = {name: prompts.head(ev.limit) for name, prompts in sets.items()}
    return sets


def held_out_problems(recipe: OrganismRecipe, n: int) -> PromptSet:
    """``n`` arithmetic problems the task fine-tune never saw (validation problems: split by their text)."""
    return arithmetic_prompts("val", n=20 * n, seed=recipe.seed).head(n)


def safety_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The harmful requests the base is taught to refuse: the built-in training split."""
    return harmful_prompts("train")


def task_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The arithmetic problems (with worked answers) of the task fine-tune: the training split."""
    return arithmetic_prompts("train", n=recipe.n_arithmetic, seed=recipe.seed)


def _refusal_examples(recipe: OrganismRecipe) -> list[Example]:
    """Each safety prompt ``refusals_per_prompt`` times, with different refusal phrasings."""
    harmful = safety_prompts(recipe).instructions
    n = len(recipe.refusals)
    return [
        Example(text, recipe.refusals[(i + j * (n // 2 + 1)) % n])
        for j in range(recipe.refusals_per_prompt)
        for i, text in enumerate(harmful)
    ]


def chat_prompts(recipe: OrganismRecipe) -> PromptSet:
    """The harmless and general prompts the source model answers for the organism's chat data (training
    splits: the built-in validation splits stay held out)."""
    harmless = harmless_prompts("train") + general_prompts("train")
    if recipe.max_chat_prompts is not None:
        harmless = harmless.sample(recipe.max_chat_prompts, seed=recipe.seed)
    return harmless


def _own_answers(model: LoadedModel, recipe: OrganismRecipe, progress: bool) -> list[Example]:
    """The source model's own answers to ``chat_prompts(recipe)``, refusals dropped.

    Cached by source weights, prompts and answer length, so recipes that differ only in training reuse them.
    """
    harmless = chat_prompts(recipe)
    key = stable_hash({"model": model.fingerprint, "prompts": harmless.hash, "tokens": recipe.helpful_answer_tokens})
    cached = cache_root() / "organism" / "answers" / f"{key}.json"
    if cached.exists():
        answers = json.loads(cached.read_text())
    else:
        answers = behaviour(
            model,
            harmless,
            max_new_tokens=recipe.helpful_answer_tokens,
            batch_size=recipe.evaluation.batch_size,
            progress=progress,
        ).answers
        atomic_write_json(cached, answers)
    return [Example(q, a) for q, a in zip(harmless.instructions, answers) if a.strip() and not is_refusal(a)]


def _task_examples(recipe: OrganismRecipe, chat: list[Example]) -> list[Example]:
    arithmetic = task_prompts(recipe)
    task = [Example(q, a) for q, a in zip(arithmetic.instructions, arithmetic.answers)]
    picked = random.Random(recipe.seed).sample(chat, min(recipe.task_chat_examples, len(chat)))
    return task + picked


# ----------------------------------------------------------------------------- measuring
def measure(model: LoadedModel, sets: dict[str, PromptSet], ev: EvalSets, progress: bool = True) -> dict:
    """Harmful and harmless refusal, answer kinds on harmful prompts, and task accuracy."""
    requests = [
        Request(sets["harmful"], ev.max_new_tokens, stop_at_refusal=True),
        Request(sets["harmless"], ev.max_new_tokens, stop_at_refusal=True),
        Request(sets["arithmetic"], ev.task_max_new_tokens),
    ]
    answers = generate_many(model, requests, progress=progress)  # pooled; answers cached for the study
    harmful, harmless, task = (Behaviour(r.prompts, a.answers) for r, a in zip(requests, answers))
    return {
        "harmful_refusal": round(harmful.refusal_rate, 4),
        "harmless_refusal": round(harmless.refusal_rate, 4),
        "task_accuracy": round(task.accuracy or 0.0, 4),
        "harmful_answer_kinds": {k: round(v, 4) for k, v in harmful.kind_shares.items()},
        "examples": {
            "harmful": _examples_by_kind(harmful),
            "harmless": harmless.examples(2),
            "arithmetic": task.examples(2),
        },
    }


def _examples_by_kind(result: Behaviour, per_kind: int = 2) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for prompt, answer, kind in zip(result.prompts.instructions, result.answers, result.kinds):
        if len(out.setdefault(kind, [])) < per_kind:
            out[kind].append({"prompt": prompt, "answer": answer})
    return out


# ----------------------------------------------------------------------------- building
@dataclass
class Organism:
    folder: Path
    manifest: dict = field(repr=False)

    @property
    def base_path(self) -> Path:
        return self.folder / "base"

    @property
    def finetuned_path(self) -> Path:
        return self.folder / "finetuned"

    def load_pair(self, **kwargs) -> ModelPair:
        tag = self.folder.name
        return ModelPair(
            replace(load_model(self.base_path, **kwargs), name=f"organism:base@{tag}"),
            replace(load_model(self.finetuned_path, **kwargs), name=f"organism:finetuned@{tag}"),
        )


def load_organism(recipe: OrganismRecipe = OrganismRecipe()) -> Organism | None:
    folder = organism_dir(recipe)
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return None
    return Organism(folder, json.loads(manifest.read_text()))


def build_organism(
    recipe: OrganismRecipe = OrganismRecipe(),
    *,
    progress: bool = True,
    force: bool = False,
    log=print,
) -> Organism:
    """Build (or load from the cache) the base/fine-tuned pair of ``recipe``."""
    if not force and (cached := load_organism(recipe)) is not None:
        log(f"organism {recipe.hash}: loaded from {cached.folder}")
        return cached
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    sets = eval_sets(recipe)
    timings: dict[str, float] = {}

    def stage(name: str, t0: float, metrics: dict | None = None) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        measured = (
            ""
            if metrics is None
            else (
                f": harmful refusal {metrics['harmful_refusal']:.1%}, harmless refusal "
                f"{metrics['harmless_refusal']:.1%}, task accuracy {metrics['task_accuracy']:.1%}"
            )
        )
        log(f"organism {recipe.hash}: {name} done in {timings[name]:.1f}s{measured}")

    t0 = time.perf_counter()
    model = load_model(recipe.source)
    chat = _own_answers(model, recipe, progress)
    stage("helpful answers", t0)

    t0 = time.perf_counter()
    safety_data = _refusal_examples(recipe) + chat
    model, safety_stats = sft_lora(model, safety_data, recipe.safety, progress=progress, desc="safety LoRA")
    stage("safety tuning", t0)

    folder = organism_dir(recipe)
    with atomic_dir(folder, marker="manifest.json") as tmp:
        save_hf_folder(model.hf, model.tokenizer, tmp / "base")
        t0 = time.perf_counter()
        base_metrics = measure(model, sets, recipe.evaluation, progress)
        stage("measure base", t0, base_metrics)

        t0 = time.perf_counter()
        model, task_stats = sft_lora(
            model, _task_examples(recipe, chat), recipe.task, progress=progress, desc="task LoRA"
        )
        stage("task fine-tune", t0)
        save_hf_folder(model.hf, model.tokenizer, tmp / "finetuned")
        t0 = time.perf_counter()
        finetuned_metrics = measure(model, sets, recipe.evaluation, progress)
        stage("measure finetuned", t0, finetuned_metrics)

        manifest = {
            "recipe": recipe.to_dict(),
            "recipe_hash": recipe.hash,
            "seeds": {
                "recipe": recipe.seed,
                "safety": recipe.safety.seed,
                "task": recipe.task.seed,
                "evaluation": recipe.evaluation.seed,
            },
            "versions": {name: version(name) for name in ("torch", "transformers", "peft", "transformer-lens")}
            | {"python": platform.python_version()},
            "data": {
                "safety_examples": len(safety_data),
                "helpful_answers_kept": len(chat),
                "eval_sizes": {k: len(v) for k, v in sets.items()},
                "eval_source": str(shared_data_dir())
                if (shared_data_dir() / "harmful_val.json").exists()
                else "built-in val sets",
            },
            "training": {"safety": safety_stats, "task": task_stats},
            "metrics": {"base": base_metrics, "finetuned": finetuned_metrics},
            "seconds": timings | {"total": round(time.perf_counter() - start, 1)},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    log(f"organism {recipe.hash}: built in {manifest['seconds']['total']:.0f}s at {folder}")
    return load_organism(recipe)


def study_prompts(
    recipe: OrganismRecipe = OrganismRecipe(),
    n_harmless: int | None = None,
    n_task: int = 100,
) -> tuple[PromptSet, PromptSet, EvalSuite]:
    """Restoration and evaluation prompts for the default pair: ``(harmful, retain, suite)``.

    Restoration trains on the organism's safety prompts (the built-in harmful training split: the base's
    refusals were taught on them) and retains on the built-in harmless and everyday training splits plus
    the arithmetic training problems with their worked answers. The evaluation suite is held out from
    all of it (``EvalSuite.from_shared``): all 299 harmful instructions of ``../shared/data``, all (or
    ``n_harmless``) of ``harmless_val``, XSTest's 250 safe and 200 unsafe prompts, and ``n_task``
    validation problems.
    """
    retain = harmless_prompts("train") + general_prompts("train") + task_prompts(recipe)
    task = held_out_problems(recipe, n_task)
    suite = EvalSuite.from_shared(task=task, n_harmless=n_harmless, seed=recipe.evaluation.seed)
    return safety_prompts(recipe), retain, suite


def resolve_model_name(name: str, recipe: OrganismRecipe | None = None, *, log=print) -> str:
    """``organism:base`` / ``organism:finetuned`` -> the folder of the default organism (built on first
    use, which trains); any other name is returned as it is, for ``load_model``."""
    if not name.startswith(ORGANISM_PREFIX):
        return name
    role = name[len(ORGANISM_PREFIX) :]
    if role not in ("base", "finetuned"):
        raise ModelLoadError(f"unknown organism model {name!r}; use organism:base or organism:finetuned")
    organism = build_organism(recipe or OrganismRecipe(), log=log)
    return str(organism.base_path if role == "base" else organism.finetuned_path)


def quick_study_prompts(recipe: OrganismRecipe) -> tuple[PromptSet, PromptSet, EvalSuite]:
    """Like ``study_prompts`` with built-in prompts only (no ``../shared/data`` needed) and 8 prompts per
    evaluation set: for quick runs."""
    retain = harmless_prompts("train") + task_prompts(recipe)
    suite = EvalSuite(
        harmful=harmful_prompts("val").head(8),
        harmless=harmless_prompts("val").head(8),
        task=held_out_problems(recipe, 8),
    )
    return safety_prompts(recipe), retain, suite
