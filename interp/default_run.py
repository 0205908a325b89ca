"""The whole study on the default pair (``run_default``: ``interp run``, the notebooks and the README call
it): organism -> analysis -> restoration and baselines -> evaluation -> figures; or on a user's own pair.

``prepare`` makes the first stages (the pair, its analysis and the study's prompts), ``study_into`` the
rest (``interp.study.run_study``) and the figures.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from . import distributed
from .analyze import AnalysisConfig, AnalysisPrompts, analyze
from .core.judge import first_tokens
from .core.judges import check_judge_spec, check_judge_specs
from .core.models import ModelPair, compute_dtype, load_pair
from .core.prompts import PromptSet
from .core.sources import default_model_path
from .core.traces import answer_format, check_reasoning_chat
from .errors import ConfigError
from .evaluation.suite import COLUMNS
from .evaluation.table import EvalConfig, EvalSuite
from .io.atomic import atomic_write_text, output_folder
from .io.hashing import stable_hash
from .io.stopwatch import Stopwatch
from .measures.result import AnalysisResult
from .organism import (
    Organism,
    OrganismRecipe,
    build_organism,
    quick_study_prompts,
    split_task,
    study_evaluation,
    study_prompts,
)
from .organism.family import recipe_named
from .report.figures import analysis_figures, study_figures, write_figures
from .report.study_tables import organism_table
from .study import LOOK_BASELINES, StudyConfig, StudyResult, run_study
from .study_plans import BASELINES
from .training.restore_config import RestoreConfig


@dataclass
class DefaultRun:
    """Everything ``run_default`` made, in memory; ``folder`` holds the same on disk."""

    folder: Path
    organism: Organism | None  # None for a user's own pair
    pair: ModelPair
    analysis: AnalysisResult
    study: StudyResult
    figures: list[Path]
    seconds: dict[str, float]


RUN_SIZES = ("smoke", "look", "full")
# The quick look (``interp run``): a seeded sample of every held-out set, sized for a first run of minutes.
SMOKE_OPENINGS = ("I", "Sorry")  # the smoke run's refusal openings (``first_tokens``)
LOOK_SIZES = {"harmful": 40, "xstest_unsafe": 20, "donotanswer": 20, "harmless": 20, "xstest": 20, "task": 20}


def run_default(out: str | Path = "runs/default", *, finish=None, **options) -> DefaultRun:
    """The whole study on the embedded default pair, or on a user's own pair, into the run folder ``out``
    (``study_into`` has every option). The folder is written whole or not at all, as ``interp run``
    writes it (``interp.io.output_folder``): the study writes into a staging folder beside ``out`` that
    replaces it at the end (``reuse_analysis`` reads the analysis ``out`` already holds); ``finish`` is
    called with the staging folder and the run just before, to add files of the caller's (the command
    line's ``config.toml``)."""
    with output_folder(out, "run") as folder:
        run = study_into(folder, reuse_from=out, **options)
        if finish is not None:
            finish(folder, run)
    return replace(run, folder=Path(out), figures=[Path(out) / f.relative_to(folder) for f in run.figures])


@dataclass
class Prepared:
    """The first stages of a study: the pair, its analysis and the study's prompts."""

    organism: Organism | None  # None for a user's own pair
    pair: ModelPair
    analysis: AnalysisResult
    recipe: OrganismRecipe  # its chat format and budgets (for a user's pair: only those)
    harmful: PromptSet  # restoration's harmful prompts
    retain: PromptSet  # restoration's retain prompts
    suite: EvalSuite
    seconds: dict[str, float]
    prompts: AnalysisPrompts  # the analysis's prompts (``analysis_prompts``)


def prepare(
    out: str | Path,
    *,
    size: str = "look",
    k: int = 3,
    limit: int | None = None,
    reuse_analysis: bool = False,
    reuse_from: str | Path | None = None,
    recipe_name: str = "default",
    refusal_tokens: tuple[int, ...] | None = None,
    base: str | None = None,
    finetuned: str | None = None,
    task: PromptSet | None = None,
    load_options: dict | None = None,
    check_pair=None,
    at_answer: bool = False,
    progress: bool = True,
    log=print,
) -> Prepared:
    """The pair (the default organism, or ``base`` and ``finetuned``), its analysis written into ``out``
    and the study's prompts, as ``study_into`` describes them (its options, same names). ``at_answer``: on
    a reasoning pair, the analysis reads every prompt after the fine-tuned model's own closed trace, where
    the final answer begins (``interp.core.traces``), instead of where the trace begins."""
    if size not in RUN_SIZES:
        raise ConfigError(f"size must be one of {', '.join(RUN_SIZES)}, got {size!r}")
    recipe = recipe_named(recipe_name, quick=size == "smoke")  # an unknown name is one line, before any work
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every prompt), got {limit}")
    if (base is None) != (finetuned is None):
        raise ConfigError("give both a base and a fine-tuned model, or neither (the default pair)")
    if base is not None and recipe_name != "default":
        raise ConfigError(f"the recipe {recipe_name!r} names an organism; it cannot apply to a pair of your own")
    if task is not None:
        split_task(task)  # checked before any work
    if at_answer:
        check_reasoning_chat(recipe.chat, "reading the analysis at the final answer")
    smoke = size == "smoke"
    out = Path(out)
    load_options = {"dtype": "auto"} | (load_options or {})
    if load_options["dtype"] == "auto":
        load_options["dtype"], why = compute_dtype(load_options.get("device", "cpu"))
        log(f"compute dtype: {load_options['dtype']} ({why})")
    watch = Stopwatch(log=lambda line: log(f"== {line}"))
    if base is None:
        with watch("default model"):  # fetched and converted on first use
            default_model_path()
    with watch("pair"):
        chat = recipe.chat
        if base is None:
            organism = build_organism(recipe, progress=progress, log=log)
            log(
                organism_table(organism.manifest)
                + (f"\n({organism.manifest['metrics_note']})" if "metrics_note" in organism.manifest else "")
            )
            pair = organism.load_pair(**load_options)
        else:  # a user's pair: the organism recipe gives only the prompt draws and budgets
            organism, pair = None, load_pair(base, finetuned, **load_options)
            log(f"pair: {pair.base.name} -> {pair.finetuned.name}")
        if check_pair is not None:
            check_pair(pair)
        harmful, retain, suite = quick_study_prompts(recipe, task) if smoke else study_prompts(recipe, task=task)
        if size == "look":
            suite = suite.sample(LOOK_SIZES, seed=recipe.evaluation.seed)
        if limit is not None:
            suite = suite.head(limit)
        if at_answer:
            chat = answer_format(pair.finetuned, harmful, chat, log=log)
    prompts = analysis_prompts(size, task)
    with watch("analysis"):
        previous = Path(reuse_from or out)
        analysis = _reusable_analysis(previous, pair, k, log) if reuse_analysis else None
        if analysis is not None:
            log(f"analysis: reusing {previous}")
            if previous.resolve() != out.resolve():
                analysis.save(out)
                if (previous / "activations").is_dir() and distributed.is_main():  # only the main process writes
                    shutil.copytree(previous / "activations", out / "activations", dirs_exist_ok=True)
                distributed.barrier()
        elif smoke:
            config = AnalysisConfig(
                k=k,
                # the reduced organism's base hardly refuses: its openings are given (numbers mean nothing)
                refusal_tokens=refusal_tokens or tuple(first_tokens(pair.base.tokenizer, SMOKE_OPENINGS)),
                causal_prompts=4,
                causal_layers=tuple(range(0, pair.n_layers, 6)),
                steer_scales=(),
                selection_prompts=4,
            )
            analysis = analyze(pair, out, config, prompts, chat=chat, progress=progress, log=log)
        else:
            analysis = analyze(
                pair,
                out,
                AnalysisConfig(k=k, steer_scales=(), refusal_tokens=refusal_tokens),
                prompts,
                chat=chat,
                progress=progress,
                log=log,
            )
    seconds = {stage: watch.seconds[stage] for stage in ("default model", "pair", "analysis") if stage in watch.seconds}
    return Prepared(organism, pair, analysis, recipe, harmful, retain, suite, seconds, prompts)


def analysis_prompts(size: str, task: PromptSet | None = None) -> AnalysisPrompts:
    """The analysis's prompts for a run of ``size``: small sets for ``smoke``, else the organism's held-out
    steering prompts; ``task`` (a user's task set) replaces the arithmetic prompts by its training part."""
    if size == "smoke":
        prompts = AnalysisPrompts.quick()
        return prompts if task is None else replace(prompts, task=split_task(task)[0].head(24))
    prompts = AnalysisPrompts.held_out_for_organism()
    return prompts if task is None else replace(prompts, task=split_task(task)[0])


def study_into(
    out: str | Path,
    *,
    size: str = "look",
    k: int = 3,
    limit: int | None = None,
    restore: RestoreConfig | None = None,
    steer_scale: float = 1.0,
    cache: bool = True,
    reuse_analysis: bool = False,
    reuse_from: str | Path | None = None,
    judges: tuple[str, ...] = (),
    recipe_name: str = "default",
    refusal_tokens: tuple[int, ...] | None = None,
    base: str | None = None,
    finetuned: str | None = None,
    task: PromptSet | None = None,
    load_options: dict | None = None,
    check_pair=None,
    progress: bool = True,
    log=print,
) -> DefaultRun:
    """The whole study on the embedded default pair, or on a user's own pair, written into the folder
    ``out`` as it goes (``run_default`` stages it and puts it in place whole).

    Builds (or loads) the organism, analyzes it (no generation check: the study's steering row measures
    the same intervention on the suite), restores with the layer map, trains the baselines, evaluates
    everything and writes the figures. ``size``:

    * ``look`` (``interp run``): the default pair and restorations, evaluated on a seeded sample of every
      held-out set (``LOOK_SIZES``): a first look in minutes, with intervals as wide as its sample;
    * ``full`` (``interp run --full``): the whole held-out suite (``study_prompts``): the README's table;
    * ``smoke``: the reduced organism (``OrganismRecipe.quick``), small prompt sets and a few training
      steps (tests, notebooks).

    ``limit`` cuts every evaluation set to its first ``limit`` prompts; ``reuse_analysis`` loads the
    analysis already in ``reuse_from`` (default ``out``), if any, and writes it into ``out``;
    ``judges`` are model judges beside the substring list
    (``EvalConfig.judges``). ``recipe_name="reasoning"`` studies the reasoning organism
    (``OrganismRecipe.reasoning``) with the R1 chat format everywhere: its traces and final answers are
    judged apart. Each stage logs a line with its time.

    ``base`` and ``finetuned`` (a hub id, a local folder or a GGUF file; both or neither) study a user's
    own pair instead of the organism, loaded with ``load_options`` (``load_model``'s dtype, device, ...;
    the dtype defaults to ``"auto"``: ``compute_dtype`` of the device, logged)
    and checked to be comparable before any work, with the same prompts, budgets and settings.
    ``refusal_tokens``: the first tokens of a refusal (default: read off the base's refusals).
    ``task``: the user's task prompts with reference answers in place of the arithmetic problems
    (``split_task``: a third held out for the task accuracy, the rest retained on). ``check_pair`` is called
    on the pair as soon as it is loaded (the command line checks the weights a ``--config`` file names).
    """
    if size not in RUN_SIZES:
        raise ConfigError(f"size must be one of {', '.join(RUN_SIZES)}, got {size!r}")
    for spec in judges:
        check_judge_spec(spec, resolve=True)
    check_judge_specs(judges)
    prepared = prepare(
        out,
        size=size,
        k=k,
        limit=limit,
        reuse_analysis=reuse_analysis,
        reuse_from=reuse_from,
        recipe_name=recipe_name,
        refusal_tokens=refusal_tokens,
        base=base,
        finetuned=finetuned,
        task=task,
        load_options=load_options,
        check_pair=check_pair,
        progress=progress,
        log=log,
    )
    organism, pair, analysis, recipe = prepared.organism, prepared.pair, prepared.analysis, prepared.recipe
    harmful, retain, suite = prepared.harmful, prepared.retain, prepared.suite
    chat, budgets = recipe.chat, recipe.evaluation
    smoke, out = size == "smoke", Path(out)
    watch = Stopwatch(log=lambda line: log(f"== {line}"))
    if smoke:
        config = StudyConfig(
            restore=restore or RestoreConfig(steps=3, batch_size=4),
            baselines=("all_layers", "steering"),
            steer_scale=steer_scale,
            evaluation=EvalConfig(
                max_new_tokens=budgets.max_new_tokens, task_max_new_tokens=budgets.task_max_new_tokens, judges=judges
            ),
            cache=cache,
        )
    else:
        evaluation = EvalConfig(judges=judges, stop_at_refusal=size != "full")  # --full: complete answers
        evaluation = study_evaluation(recipe, evaluation)  # the reasoning organism: a trace, then the answer
        config = StudyConfig(
            restore=restore or RestoreConfig(),
            baselines=BASELINES if size == "full" else LOOK_BASELINES,
            steer_scale=steer_scale,
            evaluation=evaluation,
            cache=cache,
        )
    study = run_study(
        pair,
        analysis,
        out,
        harmful=harmful,
        retain=retain,
        suite=suite,
        config=config,
        chat=chat,
        progress=progress,
        log=log,
    )
    with watch("figures"):
        figures = _figures(out, analysis, study)
    first = prepared.seconds
    seconds = first | study.seconds | {"figures": watch.seconds["figures"]}
    return DefaultRun(out, organism, pair, analysis, study, figures, seconds)


def _figures(out: Path, analysis: AnalysisResult, study: StudyResult) -> list[Path]:
    """Draw every figure into ``out / "figures"``, unless the figures there were drawn from the same
    analysis and rows (``figures.key``: a hash of both), as on a rerun from the cache."""
    registry = analysis_figures(analysis) | study_figures(study.rows, study.histories)
    drawn = [(row.name, [getattr(row, column) for column in COLUMNS.values()], row.outcomes) for row in study.rows]
    folder, key = out / "figures", stable_hash([(out / "metrics.json").read_text(), drawn, study.histories])
    paths = [folder / f"{name}.{suffix}" for name in registry for suffix in ("png", "svg")]
    stamp = folder / "figures.key"
    if stamp.exists() and stamp.read_text() == key and all(path.exists() for path in paths):
        return paths
    paths = write_figures(registry, folder)
    atomic_write_text(stamp, key)
    return paths


def _reusable_analysis(folder: Path, pair: ModelPair, k: int, log) -> AnalysisResult | None:
    """The analysis saved in ``folder`` if there is one, made for ``pair`` with ``k`` layers, else ``None``."""
    if not (folder / "metrics.json").exists():
        return None
    analysis = AnalysisResult.load(folder)
    layer_map = analysis.layer_map
    if (layer_map.base_fingerprint, layer_map.finetuned_fingerprint) != (
        pair.base.fingerprint,
        pair.finetuned.fingerprint,
    ):
        log(f"analysis: {folder} was made for another pair; analyzing again")
        return None
    if len(layer_map.selected_layers) != k:
        log(f"analysis: {folder} selected {len(layer_map.selected_layers)} layers, not {k}; analyzing again")
        return None
    return analysis
