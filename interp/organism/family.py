"""The organism family: named recipes, each a pair in which safety is lost in another way, so that the claim
can be tested on more than one pair (``recipe_named``; ``interp organism --recipe NAME``, ``interp run
--recipe NAME``, ``interp protocol --recipe NAME``).

* ``default``: SmolLM2-135M-Instruct, a safety LoRA (merged: the base), then an arithmetic LoRA (merged: the
  fine-tuned model); its adapters ship with the package.
* ``reasoning``: the same base, the task written as R1-style traces (``OrganismRecipe.reasoning``).
* ``seed-1``, ``seed-2``: the default recipe with every seed moved (the chat answers kept, the arithmetic
  problems drawn, both fine-tunes' LoRA initialisation and batch order): how stable the map and the claim
  are across builds of the same recipe.
* ``full-safety``: safety in all the weights: the safety stage fine-tunes every weight (lr 3e-5, fixed
  before any build, the usual order for full fine-tuning of a small model), so no adapter can be taken out.
* ``style``: a benign task that is text, not numbers: every chat answer written as bullet points
  (``OrganismRecipe.task_format = "style"``; task accuracy: the share of held-out answers in that format).
* ``harmful-mix``: the harmful fine-tuning setting the published peers were built for: 3% of the task data
  is harmful requests answered compliantly by the source model (``OrganismRecipe.harmful_share``).
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ConfigError
from .recipe import OrganismRecipe

FAMILY = ("default", "reasoning", "seed-1", "seed-2", "full-safety", "harmful-mix", "style")


def recipe_named(name: str, quick: bool = False) -> OrganismRecipe:
    """The recipe of the family member ``name`` (module docstring); ``quick``: its reduced build for tests
    and smoke runs (``OrganismRecipe.quick``)."""
    if name not in FAMILY:
        raise ConfigError(f"unknown organism recipe {name!r}; choose one of {', '.join(FAMILY)}")
    if name == "reasoning":
        return OrganismRecipe.reasoning(quick=quick)
    recipe = OrganismRecipe.quick() if quick else OrganismRecipe()
    if name.startswith("seed-"):
        seed = int(name.removeprefix("seed-"))
        return replace(recipe, seed=seed, safety=replace(recipe.safety, seed=10 * seed),
                       task=replace(recipe.task, seed=10 * seed + 1))  # fmt: skip
    if name == "full-safety":
        return replace(recipe, safety_full=True, safety=replace(recipe.safety, lr=3e-5, compute_dtype="bfloat16"))
    if name == "harmful-mix":
        return replace(recipe, harmful_share=0.03)
    if name == "style":
        return replace(recipe, task_format="style")
    return recipe
