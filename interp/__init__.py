"""interp: where did an aligned model's safety go after fine-tuning, and how do we put it back?

The pipeline, one sub-package per role (imports only point down this list)::

    core/        load models and prompts, encode chats, batch, run and hook models, generate and judge
    measures/    capture -> directions, probes, compare -> causal checks -> layer map (AnalysisResult)
    training/    LoRA adapters, supervised fine-tuning, restoration
    evaluation/  the evaluation table, intervals and paired tests, the restoration targets
    report/      markdown tables, plots, the figure registry
    organism.py  stage 0: the default model-organism pair
    analyze.py   stage 1: analyze(pair) -> AnalysisResult
    study.py     stage 2: run_study(pair, analysis) -> StudyResult; run_default() is `interp run`
    cli.py       the command line

The names below are the public API: notebooks and scripts import from ``interp`` alone.
"""

from .analyze import AnalysisConfig, AnalysisPrompts, analyze, layer_table
from .core.chat import ChatFormat
from .core.generate import Request, behaviour, generate, generate_many
from .core.judge import Behaviour, is_refusal
from .core.models import LoadedModel, ModelPair, load_model, load_pair
from .core.prompts import (
    PromptSet,
    arithmetic_prompts,
    general_prompts,
    harmful_prompts,
    harmless_prompts,
    load_prompts,
    parse_spec,
    public_prompts,
)
from .errors import InterpError
from .evaluation.stats import mcnemar_exact, paired_bootstrap, paired_p_value, rate_interval, wilson_interval
from .evaluation.table import Candidate, EvalConfig, EvalRow, EvalSuite, evaluate_models
from .evaluation.targets import PairedTest, Target, check_targets, paired_tests
from .measures.capture import Activations, CaptureConfig, Positions, capture
from .measures.causal import CausalSweep, SteeringCheck, causal_sweep
from .measures.compare import PairActivations, PairMetrics, compare
from .measures.directions import DiffInMeans
from .measures.layer_map import LayerMap, build_layer_map, layer_scores, score_components
from .measures.probes import LayerProbes
from .measures.result import AnalysisResult, Projection
from .organism import Organism, OrganismRecipe, build_organism, quick_study_prompts, study_prompts
from .plan import ModelShape, PlanSettings
from .report import plots
from .report.figures import analysis_figures, save_figure, study_figures, write_figures
from .report.tables import organism_table, paired_table, results_table, targets_table
from .study import DefaultRun, Plan, StudyConfig, StudyResult, make_plans, run_default, run_study
from .training.lora import apply_adapter, save_adapter, save_merged
from .training.restore import RestoreConfig, RestoreResult, RestoreStats, restore

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
