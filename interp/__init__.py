"""interp: where did an aligned model's safety go after fine-tuning, and how do we put it back?

The pipeline, one sub-package per role (imports only point down this list)::

    core/        load models and prompts, encode chats, batch, run and hook models, generate and judge
    measures/    capture -> directions, probes, compare -> causal checks -> layer map (AnalysisResult)
    training/    LoRA adapters, supervised fine-tuning, restoration
    evaluation/  the evaluation table, intervals and paired tests, the restoration targets
    report/      markdown tables, plots, the figure registry
    organism/    stage 0: the default model-organism pair
    analyze.py   stage 1: analyze(pair) -> AnalysisResult
    study.py     stage 2: run_study(pair, analysis) -> StudyResult (plans: study_plans.py, their
                 training: study_training.py); run_default() in default_run.py is `interp run`
    cli/         the command line

The public API is the names below (``interp.__all__``): notebooks and scripts use ``interp`` alone. Beside
the pipeline's entry points and result types there are six namespaces:

    interp.prompts   the prompt sets (harmful_prompts, harmless_prompts, public_prompts, load_prompts, PromptSet)
    interp.measures  the measures' modules (capture, directions, probes, compare, causal, layer_map, ...)
    interp.stats     intervals and paired tests (wilson_interval, paired_bootstrap, mcnemar_exact, ...)
    interp.plots     plot functions: data in, a figure out (an optional ``ax``)
    interp.figures   an analysis's or a study's figures by name (analysis_figures, study_figures)
    interp.tables    markdown tables of results (layer_table, results_table, paired_table, ...)
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the module that defines it: imported on first use, so `import interp` (and the command
# line's start) stays light and torch loads only when something needs it
_WHERE = {
    # load a pair
    "load_model": ".core.models",
    "load_pair": ".core.models",
    "LoadedModel": ".core.models",
    "ModelPair": ".core.models",
    "build_organism": ".organism",
    # analyze it
    "analyze": ".analyze",
    "AnalysisConfig": ".analyze",
    "AnalysisPrompts": ".analyze",
    "AnalysisResult": ".measures.result",
    "LayerMap": ".measures.layer_map",
    # restore and evaluate
    "restore": ".training.restore",
    "RestoreConfig": ".training.restore_config",
    "RestoreResult": ".training.restore",
    "evaluate_models": ".evaluation.table",
    "EvalSuite": ".evaluation.suite",
    "EvalConfig": ".evaluation.suite",
    "Candidate": ".evaluation.suite",
    # run a study
    "make_plans": ".study_plans",
    "run_study": ".study",
    "StudyConfig": ".study",
    "StudyResult": ".study",
    "run_default": ".default_run",
    # errors
    "InterpError": ".errors",
    "ConfigError": ".errors",
    # namespaces
    "prompts": ".core.prompts",
    "measures": ".measures",
    "stats": ".evaluation.stats",
    "plots": ".report.plots",
    "figures": ".report.figures",
    "tables": ".tables",
}


MODULES = {"prompts", "measures", "stats", "plots", "figures", "tables"}  # namespaces (modules)


def __getattr__(name: str):
    """``interp.NAME``: the public name, imported from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name], __name__)
    value = module if name in MODULES else getattr(module, name)
    globals()[name] = value
    return value


class _Namespace(types.ModuleType):
    """The package module: importing a submodule named like a public function (``interp.analyze``,
    ``interp.capture``, ...) must not replace the function on the package, as Python's import system
    would (it sets the submodule as an attribute of its parent)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _WHERE and name not in MODULES and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable as sys.modules["interp.NAME"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Namespace


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = sorted(_WHERE)
