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

The pair is built (or loaded from its cache) by ``build_organism``, which is also where the names
``organism:base`` / ``organism:finetuned`` are resolved (``resolve_model_name``): loading a model never
trains one. The package's modules, by job:

* ``recipe``: ``OrganismRecipe``, every setting of the pair (its hash names the pair), and its presets;
* ``family``: the named recipes (``FAMILY``, ``recipe_named``): pairs in which safety is lost in other ways;
* ``data``: what the two fine-tunes train on and the held-out sets the pair is measured on;
* ``measuring``: the measured behaviour each model's manifest records;
* ``build``: building, training and loading the pair, its cache folder and manifest;
* ``shipped``: the upkeep of the shipped adapters and answers (``scripts/regenerate_package_data.py``);
* ``prompts``: the prompt sets later stages take from the organism (``study_prompts``, ``selection_suite``).
"""

from .build import (
    ADAPTERS,
    PACKAGE_DATA,
    Organism,
    build_organism,
    load_organism,
    organism_dir,
    resolve_model_name,
    shipped_adapters,
    shipped_answers,
)
from .data import (
    chat_prompts,
    eval_sets,
    harmful_task_prompts,
    held_out_problems,
    own_answers,
    reasoning_answer,
    safety_prompts,
    task_prompts,
)
from .family import FAMILY, recipe_named
from .measuring import measure
from .prompts import quick_study_prompts, selection_suite, split_task, study_evaluation, study_prompts
from .recipe import REASONING_CHAT_TRACE, RECIPE_VERSION, REFUSALS, TASK_FORMATS, EvalSets, OrganismRecipe
from .shipped import refresh_shipped_fingerprints, ship_adapters, ship_answers

__all__ = [
    "ADAPTERS",
    "PACKAGE_DATA",
    "REASONING_CHAT_TRACE",
    "RECIPE_VERSION",
    "REFUSALS",
    "TASK_FORMATS",
    "EvalSets",
    "FAMILY",
    "Organism",
    "OrganismRecipe",
    "build_organism",
    "chat_prompts",
    "eval_sets",
    "harmful_task_prompts",
    "held_out_problems",
    "load_organism",
    "measure",
    "organism_dir",
    "own_answers",
    "quick_study_prompts",
    "reasoning_answer",
    "recipe_named",
    "refresh_shipped_fingerprints",
    "resolve_model_name",
    "safety_prompts",
    "selection_suite",
    "ship_adapters",
    "ship_answers",
    "shipped_adapters",
    "shipped_answers",
    "split_task",
    "study_evaluation",
    "study_prompts",
    "task_prompts",
]
