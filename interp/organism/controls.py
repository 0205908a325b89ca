"""A control for the organism's flattery of weight-space methods.

In the default organism the alignment vector ``V = W_base - W_source`` is exactly the merged safety LoRA: a
cleaner delta than any real pair gives, where the aligned model differs from its unaligned source by all of
instruction tuning, not only by safety. ``mixed_source`` makes an unaligned checkpoint that differs from the
base by safety *and* an unrelated skill: the source plus a merged LoRA of the safety stage's settings and
budget (``recipe.safety``, another seed) trained on the source's own answers to the organism's chat prompts
written in capital letters (a style: neither safety nor the task). With it as the unaligned model,

    V_mixed = W_base - W_mixed = S - T_style,

the safety update ``S`` minus the style update. ``delta_norms`` reports ``||S||`` and ``||T_style||``
(Frobenius norms over every block linear weight), so a reader sees how much of ``V_mixed`` is not safety.
The checkpoint is cached under the organism's cache folder (``<recipe hash>-mixed-source``).
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..core.models import LoadedModel, load_model
from ..core.sources import save_hf_folder
from ..io.atomic import atomic_dir, atomic_write_json
from ..io.cache import cache_root, intact_entry
from ..training.peers import weight_deltas
from ..training.sft import Example, sft_lora
from .build import helpful_examples
from .recipe import OrganismRecipe

STYLE_SEED_OFFSET = 100  # the style LoRA's seed: the safety stage's plus this


def mixed_source(recipe: OrganismRecipe = OrganismRecipe(), *, progress: bool = False, log=print) -> LoadedModel:
    """The source plus the capital-letters style LoRA (module docstring), from the cache or trained (minutes)."""
    folder = cache_root() / "organism" / f"{recipe.hash}-mixed-source"
    if not intact_entry(folder, "manifest.json"):
        start = time.perf_counter()
        source = load_model(recipe.source)
        examples = [Example(e.instruction, e.answer.upper()) for e in helpful_examples(source, recipe, progress)]
        config = replace(recipe.safety, seed=recipe.safety.seed + STYLE_SEED_OFFSET)
        styled = sft_lora(source, examples, config, chat=recipe.chat, progress=progress, desc="style LoRA")
        with atomic_dir(folder, marker="manifest.json", checksums=True) as tmp:
            save_hf_folder(styled.model.hf, styled.model.tokenizer, tmp / "model")
            manifest = {"recipe_hash": recipe.hash, "examples": len(examples), "training": styled.stats,
                        "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            atomic_write_json(tmp / "manifest.json", manifest)
        log(f"mixed source for organism {recipe.hash}: trained in {time.perf_counter() - start:.0f}s")
    return load_model(folder / "model", dtype="float32")


def delta_norms(source: LoadedModel, base: LoadedModel, mixed: LoadedModel) -> dict[str, float]:
    """``||S||`` (base - source), ``||T_style||`` (mixed - source) and ``||V_mixed||`` (base - mixed), Frobenius
    over every block linear weight."""

    def norm(a, b) -> float:
        return float(sum(float(d.double().pow(2).sum()) for d in weight_deltas(a, b).values()) ** 0.5)

    return {"safety": norm(base, source), "style": norm(mixed, source), "mixed delta": norm(base, mixed)}
