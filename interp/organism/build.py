"""Building the pair (``build_organism``): from the cache, else merged from the shipped adapters, else
trained from the recipe; and loading it.

Both models are saved as Hugging Face folders under ``$INTERP_CACHE/organism/<recipe hash>/`` with a
``manifest.json`` (recipe, hash, seeds, versions, times, where the adapters came from and the measured
behaviour), and the adapters under ``adapters/``. The same recipe loads from the cache. This stage is
also where the names ``organism:base`` / ``organism:finetuned`` are resolved (``resolve_model_name``):
loading a model never trains one.

The package data (``PACKAGE_DATA``: the shipped adapters and SmolLM2's answers) is read here;
``interp.organism.shipped`` writes it.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.judge import is_refusal
from ..core.models import LoadedModel, ModelPair, load_model
from ..core.sources import ORGANISM_PREFIX, save_hf_folder
from ..errors import ModelLoadError, OrganismDataError
from ..io.atomic import atomic_dir, atomic_write_json
from ..io.cache import cache_root, intact_entry, read_cache_json, write_cache_json
from ..io.hashing import file_sha256, stable_hash
from ..training.lora import merge_adapter_state
from ..training.sft import Example, sft_full, sft_lora
from .data import chat_prompts, eval_sets, harmful_task_prompts, own_answers, refusal_examples, task_examples
from .measuring import measure
from .recipe import OrganismRecipe

PACKAGE_DATA = Path(__file__).parent.parent / "data" / "organism"  # shipped answers and adapters
ADAPTERS = ("safety", "task")


def organism_dir(recipe: OrganismRecipe = OrganismRecipe()) -> Path:
    return cache_root() / "organism" / recipe.hash


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


# ----------------------------------------------------------------------------- the shipped package data
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


def merged_in_turn(model: LoadedModel, recipe: OrganismRecipe, folder: Path):
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
        for role, adapter, model in merged_in_turn(source, recipe, PACKAGE_DATA):
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


def shipped_answers(source_fingerprint: str, max_new_tokens: int) -> dict[str, str]:
    """Instruction -> the shipped answer, if ``answers.json`` was made from these weights and length."""
    path = PACKAGE_DATA / "answers.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if (data["source_fingerprint"], data["max_new_tokens"]) != (source_fingerprint, max_new_tokens):
        return {}
    return data["answers"]


# ----------------------------------------------------------------------------- training
def helpful_examples(model: LoadedModel, recipe: OrganismRecipe, progress: bool) -> list[Example]:
    """The source model's own answers to ``chat_prompts(recipe)``, refusals dropped.

    Read from the shipped ``answers.json`` when it was made from these source weights with this answer
    length and holds every prompt; else from the cache (keyed by source weights, prompts and answer
    length); else generated greedily by the evaluation engine.
    """
    return _answered(model, chat_prompts(recipe), recipe, progress)


def _answered(model: LoadedModel, prompts, recipe: OrganismRecipe, progress: bool) -> list[Example]:
    """The source's answers to ``prompts`` (shipped, cached or generated: ``helpful_examples``), refusals and
    empty answers dropped."""
    shipped = shipped_answers(model.fingerprint, recipe.helpful_answer_tokens)
    if all(q in shipped for q in prompts.instructions):
        answers = [shipped[q] for q in prompts.instructions]
    else:
        key = stable_hash({"model": model.fingerprint, "prompts": prompts.hash, "tokens": recipe.helpful_answer_tokens})
        cached = cache_root() / "organism" / "answers" / f"{key}.json"
        answers = read_cache_json(cached)
        if answers is None:
            answers = own_answers(model, prompts, recipe, progress)
            write_cache_json(cached, answers)
    return [Example(q, a) for q, a in zip(prompts.instructions, answers) if a.strip() and not is_refusal(a)]


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "transformers", "peft", "transformer-lens")} | {
        "python": platform.python_version()
    }


def _train(recipe: OrganismRecipe, progress: bool, log) -> None:
    """Train the pair from the recipe (the package docstring, ``interp.organism``) and write its folder."""
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
    chat = helpful_examples(model, recipe, progress)
    # the harmful fine-tuning setting: the source's compliant answers (before safety tuning uses the model up)
    harmful = _answered(model, harmful_task_prompts(recipe), recipe, progress) if recipe.harmful_share else []
    stage("helpful answers", t0)

    with atomic_dir(organism_dir(recipe), marker="manifest.json", checksums=True) as tmp:
        (tmp / "adapters").mkdir()
        t0 = time.perf_counter()
        safety_data = refusal_examples(recipe) + chat
        if recipe.safety_full:  # every weight: no adapter to save
            safety = sft_full(model, safety_data, recipe.safety, progress=progress, desc="safety, every weight")
        else:
            safety = sft_lora(model, safety_data, recipe.safety, progress=progress, desc="safety LoRA")
            save_file(safety.adapter, str(tmp / "adapters" / "safety.safetensors"))
        stage("safety tuning", t0)
        save_hf_folder(safety.model.hf, safety.model.tokenizer, tmp / "base")
        t0 = time.perf_counter()
        base_metrics = measure(safety.model, sets, recipe.evaluation, progress, recipe.chat)
        stage("measure base", t0, base_metrics)

        t0 = time.perf_counter()
        task_data = task_examples(recipe, chat, harmful)
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
                **({"harmful_task_examples": len(harmful)} if recipe.harmful_share else {}),
                "task_examples": len(task_data),
                "eval_sizes": {k: len(v) for k, v in sets.items()},
                "eval_source": "public sets shipped in interp/data/public",
            },
            "training": {"safety": safety.stats, "task": task.stats},
            "metrics": {"base": base_metrics, "finetuned": finetuned_metrics},
            "adapters": {
                "source": "trained from the recipe",
                "sha256": {
                    name: file_sha256(tmp / "adapters" / f"{name}.safetensors")
                    for name in ADAPTERS
                    if (tmp / "adapters" / f"{name}.safetensors").exists()  # no safety adapter: every weight
                },
            },
            "fingerprints": fingerprints,
            "versions": _versions(),
            "seconds": timings | {"total": round(time.perf_counter() - start, 1)},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    log(f"organism {recipe.hash}: built in {manifest['seconds']['total']:.0f}s at {organism_dir(recipe)}")
