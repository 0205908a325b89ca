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

**The reasoning organism** (``OrganismRecipe.reasoning()``, ``interp organism --recipe reasoning``) has
the shape of R1 distillation: the same safety-tuned base, then the task fine-tune with every answer
written as a reasoning trace and a short final answer, under the R1 chat format (the assistant turn
starts with ``<think>\n``; ``interp.core.chat.ChatFormat.reasoning``): an arithmetic answer is its worked
steps, ``</think>``, then "The answer is N."; a chat answer is one fixed line of reasoning
(``REASONING_CHAT_TRACE``), ``</think>``, then the source model's answer. No harmful data in either.
Its measurements judge the trace and the final answer apart.

Each LoRA adapter is rounded to fp16 before it is merged, so the organism is fully defined by the
source model and its two fp16 adapters. Those adapters of the default recipe ship in the package
(``interp/data/organism/``, 9.8 MB together, each pinned by its sha256 in ``shipped.json``): the default
pair is then the source plus the shipped adapters, merged in seconds instead of trained for minutes,
bit-identical to the pair the recipe builds (``build_organism(rebuild=True)``, ``interp organism
--rebuild``, rebuilds it and says whether its adapters equal the shipped ones;
``scripts/regenerate_package_data.py`` writes them). SmolLM2's own answers to the chat prompts ship
there too (``answers.json``), so a rebuild does not generate them.

Both models are saved as Hugging Face folders under ``$INTERP_CACHE/organism/<recipe hash>/`` with a
``manifest.json`` (recipe, hash, seeds, versions, times, where the adapters came from and the measured
behaviour), and the adapters under ``adapters/``. The same recipe loads from the cache. This stage is
also where the names ``organism:base`` / ``organism:finetuned`` are resolved (``resolve_model_name``):
loading a model never trains one.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .core.chat import ChatFormat
from .core.generate import Request, behaviour, generate_many
from .core.judge import Behaviour, is_refusal
from .core.judges import SubstringJudge
from .core.models import LoadedModel, ModelPair, load_model
from .core.prompts import (
    PromptSet,
    arithmetic_prompts,
    general_prompts,
    harmful_prompts,
    harmless_prompts,
    public_prompts,
    split_of,
    without_duplicates,
)
from .core.sources import ORGANISM_PREFIX, save_hf_folder
from .errors import ConfigError, ModelLoadError, OrganismDataError
from .evaluation.suite import EvalSuite
from .evaluation.table import judge_parts
from .io.atomic import atomic_dir, atomic_path, atomic_write_json
from .io.cache import cache_root, intact_entry, read_cache_json, write_cache_json
from .io.hashing import file_sha256, stable_hash
from .training.lora import merge_adapter_state
from .training.sft import Example, SFTConfig, sft_lora

RECIPE_VERSION = 5  # 5: adapters rounded to fp16 before merging; 4: train splits only
PACKAGE_DATA = Path(__file__).parent / "data" / "organism"  # shipped answers and adapters
ADAPTERS = ("safety", "task")

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


TASK_FORMATS = ("worked", "reasoning")
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
    task_format: str = "worked"  # "reasoning": the task fine-tune writes a <think> trace, then the answer

    def __post_init__(self) -> None:
        if not self.refusals:
            raise ConfigError("OrganismRecipe.refusals is empty")
        if self.n_arithmetic < 10:
            raise ConfigError("OrganismRecipe.n_arithmetic must be >= 10")
        if self.task_format not in TASK_FORMATS:
            raise ConfigError(f"task_format must be one of {', '.join(TASK_FORMATS)}, got {self.task_format!r}")

    def to_dict(self) -> dict:
        """Every setting (``task_format`` and the fine-tunes' ``compute_dtype`` only when they are not the
        defaults, so the default recipe keeps the hash its shipped adapters are pinned to)."""
        data = asdict(self)
        if data["task_format"] == "worked":
            del data["task_format"]
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
        """The reasoning organism (module docstring); ``quick``: the reduced build of ``quick()``. Its
        answers are longer (a trace, then the answer), so its token budgets are too."""
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


def organism_dir(recipe: OrganismRecipe = OrganismRecipe()) -> Path:
    return cache_root() / "organism" / recipe.hash


# ----------------------------------------------------------------------------- data
def eval_sets(recipe: OrganismRecipe) -> dict[str, PromptSet]:
    """Harmful, harmless and arithmetic evaluation prompts: the public sets that ship in the package (all
    39 of ``harmful_val`` and a sample of ``harmful_train``, a sample of ``harmless_val``) and held-out
    problems."""
    ev = recipe.evaluation
    harmful = public_prompts("harmful_val") + public_prompts("harmful_train").sample(ev.n_harmful_train, seed=ev.seed)
    harmless = public_prompts("harmless_val").sample(ev.n_harmless, seed=ev.seed)
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

    Read from the shipped ``answers.json`` when it was made from these source weights with this answer
    length and holds every prompt; else from the cache (keyed by source weights, prompts and answer
    length); else generated greedily by the evaluation engine.
    """
    harmless = chat_prompts(recipe)
    shipped = shipped_answers(model.fingerprint, recipe.helpful_answer_tokens)
    if all(q in shipped for q in harmless.instructions):
        answers = [shipped[q] for q in harmless.instructions]
    else:
        key = stable_hash(
            {"model": model.fingerprint, "prompts": harmless.hash, "tokens": recipe.helpful_answer_tokens}
        )
        cached = cache_root() / "organism" / "answers" / f"{key}.json"
        answers = read_cache_json(cached)
        if answers is None:
            answers = own_answers(model, harmless, recipe, progress)
            write_cache_json(cached, answers)
    return [Example(q, a) for q, a in zip(harmless.instructions, answers) if a.strip() and not is_refusal(a)]


def own_answers(model: LoadedModel, prompts: PromptSet, recipe: OrganismRecipe, progress: bool = False) -> list[str]:
    """Greedy answers of ``model`` (the source) to ``prompts``, as the recipe generates them."""
    return behaviour(
        model,
        prompts,
        max_new_tokens=recipe.helpful_answer_tokens,
        batch_size=recipe.evaluation.batch_size,
        progress=progress,
    ).answers


def shipped_answers(source_fingerprint: str, max_new_tokens: int) -> dict[str, str]:
    """Instruction -> the shipped answer, if ``answers.json`` was made from these weights and length."""
    path = PACKAGE_DATA / "answers.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if (data["source_fingerprint"], data["max_new_tokens"]) != (source_fingerprint, max_new_tokens):
        return {}
    return data["answers"]


def reasoning_answer(answer: str, trace: str | None = None) -> str:
    """An answer in the reasoning organism's shape, after the ``<think>\n`` prefill: a worked arithmetic
    answer's steps as the trace and its last line as the final answer, or ``trace`` before ``answer``."""
    if trace is None:
        *steps, last = answer.strip().splitlines()
        trace, answer = "\n".join(steps), last
    return f"{trace}\n</think>\n\n{answer}"


def _task_examples(recipe: OrganismRecipe, chat: list[Example]) -> list[Example]:
    arithmetic = task_prompts(recipe)
    task = [Example(q, a) for q, a in zip(arithmetic.instructions, arithmetic.answers)]
    picked = random.Random(recipe.seed).sample(chat, min(recipe.task_chat_examples, len(chat)))
    if recipe.task_format == "reasoning":
        task = [Example(e.instruction, reasoning_answer(e.answer)) for e in task]
        picked = [Example(e.instruction, reasoning_answer(e.answer, REASONING_CHAT_TRACE)) for e in picked]
    return task + picked


# ----------------------------------------------------------------------------- measuring
def measure(
    model: LoadedModel, sets: dict[str, PromptSet], ev: EvalSets, progress: bool = True, chat: ChatFormat = ChatFormat()
) -> dict:
    """Harmful and harmless refusal, answer kinds on harmful prompts, and task accuracy. With a
    reasoning format the answer kinds are those of the final answers, and ``parts`` gives, per set, the
    refusal rate in the trace and in the final answer and the share of traces that closed."""
    stop = chat.trace is None  # a refusal phrase inside a trace decides nothing
    requests = [
        Request(sets["harmful"], ev.max_new_tokens, stop_at_refusal=stop),
        Request(sets["harmless"], ev.max_new_tokens, stop_at_refusal=stop),
        Request(sets["arithmetic"], ev.task_max_new_tokens),
    ]
    answers = generate_many(model, requests, chat=chat, progress=progress)  # pooled; cached for the study
    harmful, harmless, task = (Behaviour(r.prompts, a.answers) for r, a in zip(requests, answers))
    kinds = harmful
    metrics = {}
    if chat.trace is not None:
        parts = {}
        for name, judged in (("harmful", harmful), ("harmless", harmless)):
            decided = judge_parts(SubstringJudge(), judged.prompts, judged.answers, chat)
            rates = {key: round(sum(v) / len(v), 4) for key, v in decided.items()}
            parts[name] = {
                "trace_refusal": rates["trace"],
                "answer_refusal": rates["answer"],
                "closed": rates["finished"],
            }
        kinds = Behaviour(harmful.prompts, [chat.split(answer)[1] for answer in harmful.answers])
        metrics["parts"] = parts
    return {
        "harmful_refusal": round(harmful.refusal_rate, 4),
        "harmless_refusal": round(harmless.refusal_rate, 4),
        "task_accuracy": round(task.accuracy or 0.0, 4),
        "harmful_answer_kinds": {k: round(v, 4) for k, v in kinds.kind_shares.items()},
        "examples": {
            "harmful": _examples_by_kind(harmful),
            "harmless": harmless.examples(2),
            "arithmetic": task.examples(2),
        },
    } | metrics


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
    if not intact_entry(folder, "manifest.json"):
        return None
    return Organism(folder, json.loads((folder / "manifest.json").read_text()))


def build_organism(
    recipe: OrganismRecipe = OrganismRecipe(),
    *,
    progress: bool = True,
    force: bool = False,
    rebuild: bool = False,
    log=print,
) -> Organism:
    """The base/fine-tuned pair of ``recipe``: from the cache, else from the shipped adapters when they
    belong to ``recipe`` (merged: seconds), else trained from the recipe (minutes).

    ``force`` makes the pair again (replacing the cached one); ``rebuild`` also trains from the recipe
    instead of using the shipped adapters, and logs whether its adapters equal the shipped ones.
    """
    if not (force or rebuild) and (cached := load_organism(recipe)) is not None:
        log(f"organism {recipe.hash}: loaded from {cached.folder}")
        return cached
    shipped = None if rebuild else shipped_adapters(recipe)
    if shipped is None or not _merge_shipped(recipe, shipped, log):
        _train(recipe, progress, log)
    organism = load_organism(recipe)
    if rebuild and (pinned := shipped_adapters(recipe)) is not None:
        built = organism.manifest["adapters"]["sha256"]
        same = built == pinned["sha256"]
        log(
            f"organism {recipe.hash}: rebuilt adapters "
            + (
                "are identical to the shipped ones"
                if same
                else f"differ from the shipped ones: {built} vs {pinned['sha256']}"
            )
        )
    return organism


def shipped_adapters(recipe: OrganismRecipe) -> dict | None:
    """``shipped.json`` if the package's adapters were made by ``recipe``, after checking every file
    against its pinned sha256; ``None`` if they belong to another recipe (or none ship)."""
    path = PACKAGE_DATA / "shipped.json"
    if not path.exists():
        return None
    shipped = json.loads(path.read_text())
    if shipped["recipe_hash"] != recipe.hash:
        return None
    for name in ADAPTERS:
        file = PACKAGE_DATA / f"{name}.safetensors"
        if not file.exists() or file_sha256(file) != shipped["sha256"][name]:
            raise OrganismDataError(
                f"{file} is missing or does not match its pinned sha256; reinstall interp or rebuild the "
                "organism from its recipe (`interp organism --rebuild`)"
            )
    return shipped


def _merged_in_turn(model: LoadedModel, recipe: OrganismRecipe, folder: Path):
    """``(role, adapter file, model)`` as the shipped adapters are merged one after the other into the
    source ``model``: the safety adapter gives the base, the task adapter on top of it the fine-tuned model."""
    for name, role, sft in (("safety", "base", recipe.safety), ("task", "finetuned", recipe.task)):
        adapter = folder / f"{name}.safetensors"
        model = merge_adapter_state(model, load_file(str(adapter)), sft.lora_config())
        yield role, adapter, model


def _merge_shipped(recipe: OrganismRecipe, shipped: dict, log) -> bool:
    """Make the pair from the source and the shipped adapters; ``False`` (nothing written) if the source
    weights are not those the adapters were trained on."""
    start = time.perf_counter()
    source = load_model(recipe.source)
    if source.fingerprint != shipped["fingerprints"]["source"]:
        log(
            f"organism {recipe.hash}: the source weights ({source.fingerprint}) are not those the shipped "
            f"adapters were trained on ({shipped['fingerprints']['source']}); training from the recipe"
        )
        return False
    with atomic_dir(organism_dir(recipe), marker="manifest.json", checksums=True) as tmp:
        models = {}
        for role, adapter, model in _merged_in_turn(source, recipe, PACKAGE_DATA):
            save_hf_folder(model.hf, model.tokenizer, tmp / role)
            (tmp / "adapters").mkdir(exist_ok=True)
            shutil.copyfile(adapter, tmp / "adapters" / adapter.name)
            models[role] = model.fingerprint
        same = models == {k: shipped["fingerprints"][k] for k in models}
        if not same:
            log(
                f"organism {recipe.hash}: merging the shipped adapters gave other weights than the build "
                f"({models} vs {shipped['fingerprints']}); this torch may round differently"
            )
        atomic_write_json(
            tmp / "manifest.json",
            {
                **{k: shipped[k] for k in ("recipe", "recipe_hash", "seeds", "data", "training", "metrics")},
                "adapters": {
                    "source": f"shipped with interp ({PACKAGE_DATA})",
                    "sha256": shipped["sha256"],
                    "weights_equal_the_build": same,
                },
                "fingerprints": {"source": shipped["fingerprints"]["source"], **models},
                "metrics_note": "measured when the shipped adapters were built (`interp organism --rebuild`)",
                "built_with": shipped["versions"],
                "versions": _versions(),
                "seconds": {"merge shipped adapters": round(time.perf_counter() - start, 1)},
            },
        )
    log(f"organism {recipe.hash}: merged the shipped adapters in {time.perf_counter() - start:.0f}s")
    return True


def ship_adapters(organism: Organism, folder: Path = PACKAGE_DATA) -> Path:
    """Write ``organism``'s adapters (trained from its recipe) and ``shipped.json`` (recipe, sha256 pins,
    weight fingerprints, measurements) into ``folder``: the package data ``build_organism`` merges."""
    manifest = organism.manifest
    if manifest["adapters"]["source"] != "trained from the recipe":
        raise ConfigError("only adapters trained from the recipe can be shipped (build with rebuild=True)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ADAPTERS:
        with atomic_path(folder / f"{name}.safetensors") as tmp:
            shutil.copyfile(organism.folder / "adapters" / f"{name}.safetensors", tmp)
    keep = ("recipe", "recipe_hash", "seeds", "data", "training", "metrics", "fingerprints", "versions")
    shipped = {k: manifest[k] for k in keep} | {"sha256": manifest["adapters"]["sha256"]}
    return atomic_write_json(folder / "shipped.json", shipped)


def refresh_shipped_fingerprints(recipe: OrganismRecipe | None = None, folder: Path = PACKAGE_DATA) -> dict:
    """Rewrite the weight fingerprints in ``shipped.json`` and ``answers.json`` after the fingerprint
    *function* changed (``interp.core.models.model_fingerprint``): the shipped adapters (checked by their
    sha256) are merged into the source as ``build_organism`` merges them, and the new fingerprints of
    source, base and fine-tuned are written. Neither the adapters nor the answers change."""
    recipe = recipe or OrganismRecipe()
    shipped = shipped_adapters(recipe)
    if shipped is None:
        raise OrganismDataError(f"no shipped adapters for recipe {recipe.hash} in {folder}")
    source = load_model(recipe.source)
    fingerprints = {"source": source.fingerprint}
    for role, _, model in _merged_in_turn(source, recipe, folder):
        fingerprints[role] = model.fingerprint
    atomic_write_json(folder / "shipped.json", shipped | {"fingerprints": fingerprints})
    answers = json.loads((folder / "answers.json").read_text())
    atomic_write_json(folder / "answers.json", answers | {"source_fingerprint": fingerprints["source"]})
    return fingerprints


def ship_answers(
    model: LoadedModel, recipe: OrganismRecipe, folder: Path = PACKAGE_DATA, progress: bool = True
) -> Path:
    """Generate the source model's answers to every chat prompt of ``recipe`` (no cap) and write them to
    ``folder / "answers.json"`` with the weights fingerprint and answer length they belong to."""
    prompts = chat_prompts(replace(recipe, max_chat_prompts=None))
    answers = own_answers(model, prompts, recipe, progress)
    return atomic_write_json(
        folder / "answers.json",
        {
            "source_fingerprint": model.fingerprint,
            "max_new_tokens": recipe.helpful_answer_tokens,
            "prompts": {"name": prompts.name, "n": len(prompts), "hash": prompts.hash},
            "answers": dict(zip(prompts.instructions, answers)),
        },
    )


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "transformers", "peft", "transformer-lens")} | {
        "python": platform.python_version()
    }


def _train(recipe: OrganismRecipe, progress: bool, log) -> None:
    """Train the pair from the recipe (module docstring) and write its folder."""
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
    fingerprints = {"source": model.fingerprint}
    chat = _own_answers(model, recipe, progress)
    stage("helpful answers", t0)

    with atomic_dir(organism_dir(recipe), marker="manifest.json", checksums=True) as tmp:
        (tmp / "adapters").mkdir()
        t0 = time.perf_counter()
        safety_data = _refusal_examples(recipe) + chat
        safety = sft_lora(model, safety_data, recipe.safety, progress=progress, desc="safety LoRA")
        stage("safety tuning", t0)
        save_hf_folder(safety.model.hf, safety.model.tokenizer, tmp / "base")
        save_file(safety.adapter, str(tmp / "adapters" / "safety.safetensors"))
        t0 = time.perf_counter()
        base_metrics = measure(safety.model, sets, recipe.evaluation, progress, recipe.chat)
        stage("measure base", t0, base_metrics)

        t0 = time.perf_counter()
        task_data = _task_examples(recipe, chat)
        task = sft_lora(safety.model, task_data, recipe.task, chat=recipe.chat, progress=progress, desc="task LoRA")
        stage("task fine-tune", t0)
        save_hf_folder(task.model.hf, task.model.tokenizer, tmp / "finetuned")
        save_file(task.adapter, str(tmp / "adapters" / "task.safetensors"))
        fingerprints |= {"base": safety.model.fingerprint, "finetuned": task.model.fingerprint}
        t0 = time.perf_counter()
        finetuned_metrics = measure(task.model, sets, recipe.evaluation, progress, recipe.chat)
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
            "data": {
                "safety_examples": len(safety_data),
                "helpful_answers_kept": len(chat),
                "eval_sizes": {k: len(v) for k, v in sets.items()},
                "eval_source": "public sets shipped in interp/data/public",
            },
            "training": {"safety": safety.stats, "task": task.stats},
            "metrics": {"base": base_metrics, "finetuned": finetuned_metrics},
            "adapters": {
                "source": "trained from the recipe",
                "sha256": {name: file_sha256(tmp / "adapters" / f"{name}.safetensors") for name in ADAPTERS},
            },
            "fingerprints": fingerprints,
            "versions": _versions(),
            "seconds": timings | {"total": round(time.perf_counter() - start, 1)},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    log(f"organism {recipe.hash}: built in {manifest['seconds']['total']:.0f}s at {organism_dir(recipe)}")


def study_prompts(
    recipe: OrganismRecipe = OrganismRecipe(),
    n_harmless: int | None = None,
    n_task: int = 100,
    task: PromptSet | None = None,
) -> tuple[PromptSet, PromptSet, EvalSuite]:
    """Restoration and evaluation prompts for the default pair: ``(harmful, retain, suite)``.

    Restoration trains on the organism's safety prompts (the built-in harmful training split: the base's
    refusals were taught on them) and retains on the built-in harmless and everyday training splits plus
    the arithmetic training problems with their worked answers. The evaluation suite is held out from
    all of it (``EvalSuite.public``: the public sets that ship in the package): all 299 harmful
    instructions, all (or ``n_harmless``) of ``harmless_val``, XSTest's 250 safe and 200 unsafe prompts,
    Do-Not-Answer's 938 questions, and ``n_task`` validation problems.

    ``task``: a user's own task prompts with reference answers, in place of the arithmetic problems:
    ``split_task`` holds out a third of them for the evaluation and retains on the rest.
    """
    retain = harmless_prompts("train") + general_prompts("train")
    if task is None:
        retain, held_out = retain + task_prompts(recipe), held_out_problems(recipe, n_task)
    else:
        train, held_out = split_task(task)
        retain = retain + train
    suite = EvalSuite.public(task=held_out, n_harmless=n_harmless, seed=recipe.evaluation.seed)
    return safety_prompts(recipe), retain, suite


def split_task(task: PromptSet) -> tuple[PromptSet, PromptSet]:
    """A user's task set as ``(train, held_out)``: about a third held out, by a hash of each prompt's text
    (``split_of``), so the split never depends on the file's order. Every prompt needs a reference
    answer (task accuracy), and each part at least two prompts."""
    task = without_duplicates(task)
    if any(answer is None for answer in task.answers):
        raise ConfigError(f"task set {task.name!r}: every prompt needs a reference answer (an 'answer' field)")
    parts = {"train": [], "val": []}
    for i, text in enumerate(task.instructions):
        parts[split_of(text, val_share=3)].append(i)
    if min(len(v) for v in parts.values()) < 2:
        raise ConfigError(
            f"task set {task.name!r}: {len(task)} prompts split into {len(parts['train'])} to train on and "
            f"{len(parts['val'])} held out; give at least 6 different prompts"
        )
    return task.subset(parts["train"], split="train"), task.subset(parts["val"], split="val")


def selection_suite(recipe: OrganismRecipe = OrganismRecipe(), n_task: int = 50) -> EvalSuite:
    """Prompts for choosing settings (e.g. restoration strength), disjoint from the evaluation suite of
    ``study_prompts`` and from everything restoration trains on: the built-in harmful validation split,
    100 of the public ``harmless_train`` set and ``n_task`` validation problems after the evaluation's 100."""
    harmless = public_prompts("harmless_train").sample(100, seed=recipe.evaluation.seed)
    task = held_out_problems(recipe, 100 + n_task)
    return EvalSuite(harmful=harmful_prompts("val"), harmless=harmless, task=task.subset(range(100, len(task))))


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


def quick_study_prompts(
    recipe: OrganismRecipe, task: PromptSet | None = None
) -> tuple[PromptSet, PromptSet, EvalSuite]:
    """Like ``study_prompts`` with built-in prompts only and 8 prompts per evaluation set: for quick runs."""
    train, held_out = (task_prompts(recipe), held_out_problems(recipe, 8)) if task is None else split_task(task)
    suite = EvalSuite(
        harmful=harmful_prompts("val").head(8), harmless=harmless_prompts("val").head(8), task=held_out.head(8)
    )
    return safety_prompts(recipe), harmless_prompts("train") + train, suite
