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
    cli.py       the command line

The names below are the public API: notebooks and scripts import from ``interp`` alone.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the module that defines it: imported on first use, so `import interp` (and the command
# line's start) stays light and torch loads only when something needs it
_WHERE = {
    "Activations": ".measures.capture",
    "analysis_figures": ".report.figures",
    "AnalysisConfig": ".analyze",
    "AnalysisPrompts": ".analyze",
    "AnalysisResult": ".measures.result",
    "analyze": ".analyze",
    "apply_adapter": ".training.lora",
    "arithmetic_prompts": ".core.prompts",
    "behaviour": ".core.generate",
    "Behaviour": ".core.judge",
    "build_layer_map": ".measures.layer_map",
    "build_organism": ".organism",
    "Candidate": ".evaluation.suite",
    "capture": ".measures.capture",
    "CaptureConfig": ".measures.capture",
    "causal_sweep": ".measures.causal",
    "CausalSweep": ".measures.causal",
    "ChatFormat": ".core.chat",
    "check_targets": ".evaluation.targets",
    "compare": ".measures.compare",
    "DefaultRun": ".default_run",
    "DiffInMeans": ".measures.directions",
    "EvalConfig": ".evaluation.suite",
    "EvalRow": ".evaluation.suite",
    "EvalSuite": ".evaluation.suite",
    "evaluate_models": ".evaluation.table",
    "general_prompts": ".core.prompts",
    "generate": ".core.generate",
    "generate_many": ".core.generate",
    "harmful_prompts": ".core.prompts",
    "harmless_prompts": ".core.prompts",
    "InterpError": ".errors",
    "is_refusal": ".core.judge",
    "layer_scores": ".measures.layer_map",
    "layer_table": ".analyze",
    "LayerMap": ".measures.layer_map",
    "LayerProbes": ".measures.probes",
    "load_model": ".core.models",
    "load_pair": ".core.models",
    "load_prompts": ".core.prompts",
    "LoadedModel": ".core.models",
    "make_plans": ".study_plans",
    "mcnemar_exact": ".evaluation.stats",
    "ModelPair": ".core.models",
    "ModelShape": ".plan",
    "Organism": ".organism",
    "organism_table": ".report.study_tables",
    "OrganismRecipe": ".organism",
    "PairActivations": ".measures.compare",
    "paired_bootstrap": ".evaluation.stats",
    "paired_p_value": ".evaluation.stats",
    "paired_table": ".report.study_tables",
    "paired_tests": ".evaluation.targets",
    "PairedTest": ".evaluation.targets",
    "PairMetrics": ".measures.compare",
    "parse_spec": ".core.prompts",
    "Plan": ".study_plans",
    "PlanSettings": ".plan",
    "plots": ".report.plots",
    "Positions": ".measures.capture",
    "Projection": ".measures.result",
    "PromptSet": ".core.prompts",
    "public_prompts": ".core.prompts",
    "quick_study_prompts": ".organism",
    "rate_interval": ".evaluation.stats",
    "Request": ".core.generate",
    "restore": ".training.restore",
    "RestoreConfig": ".training.restore",
    "RestoreResult": ".training.restore",
    "RestoreStats": ".training.restore",
    "results_table": ".report.study_tables",
    "run_default": ".default_run",
    "run_study": ".study",
    "save_adapter": ".training.lora",
    "save_figure": ".report.figures",
    "save_merged": ".training.lora",
    "score_components": ".measures.layer_map",
    "SteeringCheck": ".measures.causal",
    "study_figures": ".report.figures",
    "study_prompts": ".organism",
    "StudyConfig": ".study",
    "StudyResult": ".study",
    "Target": ".evaluation.targets",
    "targets_table": ".report.study_tables",
    "wilson_interval": ".evaluation.stats",
    "write_figures": ".report.figures",
}


MODULES = {"plots"}  # public names that are namespaces (modules), not objects defined in one


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


__all__ = [
    "Activations",
    "AnalysisConfig",
    "AnalysisPrompts",
    "AnalysisResult",
    "Behaviour",
    "Candidate",
    "CaptureConfig",
    "CausalSweep",
    "ChatFormat",
    "DefaultRun",
    "DiffInMeans",
    "EvalConfig",
    "EvalRow",
    "EvalSuite",
    "InterpError",
    "LayerMap",
    "LayerProbes",
    "LoadedModel",
    "ModelPair",
    "ModelShape",
    "Organism",
    "OrganismRecipe",
    "PairActivations",
    "PairMetrics",
    "PairedTest",
    "Plan",
    "PlanSettings",
    "Positions",
    "Projection",
    "PromptSet",
    "Request",
    "RestoreConfig",
    "RestoreResult",
    "RestoreStats",
    "SteeringCheck",
    "StudyConfig",
    "StudyResult",
    "Target",
    "analysis_figures",
    "analyze",
    "apply_adapter",
    "arithmetic_prompts",
    "behaviour",
    "build_layer_map",
    "build_organism",
    "capture",
    "causal_sweep",
    "check_targets",
    "compare",
    "evaluate_models",
    "general_prompts",
    "generate",
    "generate_many",
    "harmful_prompts",
    "harmless_prompts",
    "is_refusal",
    "layer_scores",
    "layer_table",
    "load_model",
    "load_pair",
    "load_prompts",
    "make_plans",
    "mcnemar_exact",
    "organism_table",
    "paired_bootstrap",
    "paired_p_value",
    "paired_table",
    "paired_tests",
    "parse_spec",
    "plots",
    "quick_study_prompts",
    "rate_interval",
    "restore",
    "results_table",
    "run_default",
    "run_study",
    "save_adapter",
    "save_figure",
    "save_merged",
    "score_components",
    "public_prompts",
    "study_figures",
    "study_prompts",
    "targets_table",
    "wilson_interval",
    "write_figures",
]
