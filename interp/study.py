"""Restoration with the layer map against baselines, evaluated in one table, written as a report.

Every trained plan gets the same losses, data, step budget and seed; only where LoRA sits and where
hidden states are aligned differ:

* ``ranked``: LoRA on the map's selected layers, aligned at the map's alignment layers (selected + last).
* ``all_layers``: LoRA on every layer (the paper's placement; not its lr, steps, rank or teacher),
  aligned at every 5th layer (0-based 4, 9, 14, ...) and the last.
* ``random_k``: LoRA on ``k`` layers drawn at random (seeded), aligned there and at the last layer.
* ``bottom_k``: the ``k`` lowest-ranked layers, aligned there and at the last layer.
* ``components``: LoRA on the ``k`` top-ranked components (attention: q/k/v/o, MLP: gate/up/down of
  one block; the analysis's component map), aligned at their layers and the last: the same number of
  ranked places, steps, rank and data as ``ranked``, with fewer parameters.
* ``steering``: no training: the base model's refusal vector is added to the fine-tuned model's
  residual stream at the analysis's best add layer while it generates.

``run_default`` is the whole study on the default pair (``interp run``, the notebooks and the README
call it): organism -> analysis -> restoration and baselines -> evaluation -> figures.

Trained adapters are cached (keyed by both models' weights, the plan, the config and the prompts), so a
rerun reloads them and reports the training time of the run that trained them.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import distributed
from .analyze import AnalysisConfig, AnalysisPrompts, analyze
from .core.chat import ChatFormat
from .core.judge import first_tokens
from .core.judges import check_judge_spec, check_judge_specs
from .core.models import LoadedModel, ModelPair, compute_dtype, load_pair
from .core.prompts import PromptSet
from .core.sources import default_model_path, save_hf_folder
from .errors import ConfigError
from .evaluation.rejudge import RunAnswers
from .evaluation.suite import COLUMNS, Candidate, EvalConfig, EvalRow, EvalSuite
from .evaluation.table import evaluate_models
from .evaluation.targets import PairedTest, Target, check_targets, paired_tests
from .io.atomic import atomic_dir, atomic_write_json, atomic_write_text, output_folder
from .io.cache import cache_root, intact_entry
from .io.hashing import stable_hash
from .io.stopwatch import Stopwatch
from .measures.causal import steering_edits, steering_key
from .measures.layer_map import LayerMap
from .measures.result import AnalysisResult
from .organism import Organism, OrganismRecipe, build_organism, quick_study_prompts, split_task, study_prompts
from .report.figures import analysis_figures, study_figures, write_figures
from .report.study_tables import organism_table, study_report
from .training.lora import apply_adapter, save_adapter
from .training.restore import PRESETS, Placement, RestoreConfig, RestoreStats, paper_alignment_layers, restore_many

BASELINES = ("all_layers", "random_k", "bottom_k", "components", "steering", "released")
LOOK_BASELINES = BASELINES[:-1]  # the released recipe (400 steps; about 23 min on 2 CPU cores) runs in --full
RESTORE_CACHE_VERSION = 2  # 2: hidden states are block outputs (before the final norm) at every layer


@dataclass(frozen=True)
class Plan:
    """Where one restoration puts LoRA and where it aligns hidden states."""

    key: str  # ranked, all_layers, random_k, bottom_k, components
    name: str  # the row name in the table
    layers: tuple[int, ...]
    alignment: tuple[int, ...]
    modules: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (layer, module names); empty: whole blocks
    lr: float | None = None  # its own learning rate (None: the restoration config's)

    @property
    def placement(self) -> Placement:
        return Placement(self.layers, self.alignment, self.modules, self.lr)

    def aligned_at(self, alignment: Sequence[int]) -> Plan:
        """The same plan aligned at ``alignment`` (the protocol's shared, plan-independent layers)."""
        return replace(self, alignment=tuple(sorted(set(alignment))))


def component_plan(component_map: LayerMap) -> Plan:
    """LoRA on a component map's entries (``interp.measures.layer_map.component_map``)."""
    modules = tuple((layer, tuple(names)) for layer, names in component_map.modules.items())
    short = {"q_proj": "attn", "gate_proj": "mlp"}
    parts = [f"{layer} {'+'.join(short[m] for m in names if m in short)}" for layer, names in modules]
    return Plan(
        "components",
        f"components top-{len(parts)} [{', '.join(parts)}]",
        tuple(component_map.selected_layers),
        tuple(component_map.alignment_layers),
        modules,
    )


def make_plans(
    layer_map: LayerMap, baselines: Sequence[str] = BASELINES, seed: int = 0, component_map: LayerMap | None = None
) -> list[Plan]:
    """The ranked plan first, then the trained baselines asked for (``steering`` needs no plan;
    ``components`` needs the analysis's ``component_map``)."""
    n, k, last = layer_map.n_layers, len(layer_map.selected_layers), layer_map.n_layers - 1

    def with_last(layers) -> tuple[int, ...]:
        return tuple(sorted(set(layers) | {last}))

    plans = [
        Plan(
            "ranked",
            f"restored (ranked top-{k})",
            tuple(sorted(layer_map.selected_layers)),
            tuple(layer_map.alignment_layers),
        )
    ]
    if "all_layers" in baselines:
        plans.append(Plan("all_layers", "all layers", tuple(range(n)), tuple(paper_alignment_layers(n))))
    if "random_k" in baselines:
        plans += random_plans(layer_map, draws=1, seed=seed)
    if "bottom_k" in baselines:
        layers = sorted(layer_map.ranked_layers[-k:])
        plans.append(Plan("bottom_k", f"bottom-{k} {layers}", tuple(layers), with_last(layers)))
    if "components" in baselines and component_map is not None:
        plans.append(component_plan(component_map))
    return plans


def released_plan(n_layers: int) -> Plan:
    """The released SafeReAct recipe's placement: LoRA on every layer, aligned at the paper's grid; it trains
    with its own settings (``PRESETS["safereact"].config``: r16, lr 2e-5, 400 steps, the reminder teacher)."""
    return Plan(
        "released", "released SafeReAct recipe", tuple(range(n_layers)), tuple(paper_alignment_layers(n_layers))
    )


def ranked_plan(layer_map: LayerMap, k: int) -> Plan:
    """LoRA on the map's ``k`` top-ranked layers, aligned there and at the last layer. With ``k`` = the
    map's selected count this is the study's ``ranked`` plan (the same layers and alignment)."""
    n = layer_map.n_layers
    if not 1 <= k <= n:
        raise ConfigError(f"ranked_plan: k must be in [1, {n}], got {k}")
    layers = tuple(sorted(layer_map.ranked_layers[:k]))
    key = "ranked" if k == len(layer_map.selected_layers) else f"ranked:{k}"
    return Plan(key, f"ranked top-{k} {list(layers)}", layers, tuple(sorted(set(layers) | {n - 1})))


def random_plans(
    layer_map: LayerMap,
    draws: int,
    seed: int = 0,
    low: int = 0,
    key: str = "random_k",
    k: int | None = None,
    holding: int | None = None,
    exclude: Sequence[Sequence[int]] = (),
) -> list[Plan]:
    """``draws`` distinct plans with LoRA on ``k`` layers drawn at random from ``low .. n_layers - 1``
    (seeded ``seed``, ``seed + 1``, ...; a draw that repeats an earlier one or is in ``exclude`` is
    skipped, so no layer set counts twice; ``k`` defaults to the map's selected count), aligned there and
    at the last layer. With ``low`` at the ranked plan's lowest layer the draws share its depth range, so
    "late layers help" and "these layers help" can be told apart; ``holding`` puts that layer in every
    draw (the ranked plan's deepest, say) and draws the other ``k - 1``. The first draw with ``low=0`` is
    the study's ``random_k``."""
    n = layer_map.n_layers
    k = len(layer_map.selected_layers) if k is None else k
    if not 1 <= k <= n:
        raise ConfigError(f"random_plans: k must be in [1, {n}], got {k}")
    if not 0 <= low <= n - k:
        raise ConfigError(f"random_plans: low must be in [0, {n - k}] to draw {k} layers, got {low}")
    if holding is not None and not low <= holding < n:
        raise ConfigError(f"random_plans: the layer every draw holds must be in [{low}, {n}), got {holding}")
    pool = [layer for layer in range(low, n) if layer != holding]
    fixed = [] if holding is None else [holding]
    excluded = [sorted(layers) for layers in exclude]
    drawable = set(pool) | set(fixed)
    reachable = [x for x in excluded if len(x) == k and set(fixed) <= set(x) <= drawable]  # sets a draw could hit
    possible = math.comb(len(pool), k - len(fixed)) - len(reachable)
    if draws > possible:
        raise ConfigError(f"random_plans: only {possible} distinct sets of {k} layers, {draws} asked")
    drawn: list[list[int]] = []
    offset = seed
    while len(drawn) < draws:
        layers = sorted(fixed + random.Random(offset).sample(pool, k - len(fixed)))
        offset += 1
        if layers not in drawn and layers not in excluded:
            drawn.append(layers)
    plans = []
    for i, layers in enumerate(drawn):
        name = f"random-{k} {layers}" if low == 0 else f"random-{k} from {low} {layers}"
        plans.append(Plan(key if i == 0 else f"{key}:{i}", name, tuple(layers), tuple(sorted(set(layers) | {n - 1}))))
    return plans


@dataclass(frozen=True)
class StudyConfig:
    restore: RestoreConfig = RestoreConfig()
    baselines: tuple[str, ...] = LOOK_BASELINES
    steer_scale: float = 1.0
    evaluation: EvalConfig = EvalConfig()
    cache: bool = True  # reuse trained adapters and evaluated rows from the cache
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ConfigError(f"unknown baselines {sorted(unknown)}; choose from {', '.join(BASELINES)}")
        if not self.steer_scale > 0:
            raise ConfigError("steer_scale must be > 0")


@dataclass
class Restored:
    plan: Plan
    model: LoadedModel  # the fine-tuned model with the adapter merged in (plain HF)
    stats: RestoreStats
    adapter: Path  # the adapter in peft's format
    cached: bool
    checkpoints: dict[int, Path] = field(default_factory=dict)  # step -> the adapter after that many steps

    def candidate(self, seconds: float | None = None, **info) -> Candidate:
        """This restoration as a row of the evaluation table; ``seconds`` is its training time (default
        ``stats.seconds``), ``info`` is reported beside its layers."""
        return Candidate(
            self.plan.name,
            self.model,
            trainable_params=self.stats.trainable_params,
            train_seconds=self.stats.seconds if seconds is None else seconds,
            plan=self.plan.key,
            info={"layers": list(self.plan.layers), **info},
        )


def _restoration_folder(
    plan: Plan, pair: ModelPair, layer_map: LayerMap, harmful, retain, config, chat, checkpoints: Sequence[int] = ()
) -> Path:
    """Where ``plan``'s trained adapter is cached: keyed by both models' weights, the plan, the settings,
    the prompts, the chat format and the checkpoints kept."""
    key = stable_hash(
        [
            pair.base.fingerprint,
            pair.finetuned.fingerprint,
            plan.layers,
            plan.alignment,
            *([plan.modules] if plan.modules else []),  # whole-block plans keep their earlier keys
            *([plan.lr] if plan.lr is not None else []),  # as do plans at the config's lr
            config.key(),
            harmful.hash,
            retain.hash,
            layer_map.target_modules,
            chat.system_prompt,
            chat.user_suffix,
            RESTORE_CACHE_VERSION,
            *([sorted(checkpoints)] if checkpoints else []),  # (plans without checkpoints keep their keys)
        ]
    )
    return cache_root() / "restorations" / key


def train_plans(
    plans: Sequence[Plan],
    pair: ModelPair,
    layer_map: LayerMap,
    harmful: PromptSet,
    retain: PromptSet,
    config: RestoreConfig,
    *,
    chat: ChatFormat = ChatFormat(),
    cache: bool = True,
    progress: bool = True,
    checkpoints: Sequence[int] = (),
) -> list[Restored]:
    """Restore the fine-tuned model with every plan and merge each adapter into a copy of its weights.

    Cached adapters are reloaded; the plans not in the cache train together, in lockstep
    (``restore_many``: same batches, shared teacher and frozen passes). ``checkpoints``: steps after
    which each adapter is kept too (``Restored.checkpoints``: a strength sweep from one run)."""
    folders = [_restoration_folder(plan, pair, layer_map, harmful, retain, config, chat, checkpoints) for plan in plans]
    # Plans not in the cache, each distinct adapter once (two plans on the same layers share it).
    missing: list[int] = []
    for i, folder in enumerate(folders):
        if not (cache and intact_entry(folder, "stats.json")) and folder not in {folders[j] for j in missing}:
            missing.append(i)
    trained = dict(
        zip(
            missing,
            restore_many(
                pair.finetuned,
                layer_map,
                harmful,
                retain,
                [plans[i].placement for i in missing],
                config,
                base=pair.base if config.teacher == "base" else None,
                chat=chat,
                checkpoints=checkpoints,
                progress=progress,
            )
            if missing
            else [],
        )
    )
    for i in trained:
        with atomic_dir(folders[i], marker="stats.json", checksums=True) as tmp:
            save_adapter(trained[i].peft_model, tmp / "adapter", trained_on=pair.finetuned.fingerprint)
            for step in checkpoints:
                kept = trained[i].peft_at(step, pair.finetuned)
                save_adapter(kept, tmp / f"checkpoint-{step}", trained_on=pair.finetuned.fingerprint)
            atomic_write_json(tmp / "stats.json", trained[i].stats.to_dict())
    restored = []
    for i, (plan, folder) in enumerate(zip(plans, folders)):
        if i in trained:
            stats = trained[i].stats
            model = trained[i].merged(pair.finetuned, name=plan.name)  # the student's own copy of the weights
        else:
            stats = RestoreStats.from_dict(json.loads((folder / "stats.json").read_text()))
            student = replace(pair.finetuned, hf=copy.deepcopy(pair.finetuned.hf))
            model = apply_adapter(student, folder / "adapter", name=plan.name)
        trained_now = any(folders[j] == folder for j in trained)
        kept = {step: folder / f"checkpoint-{step}" for step in checkpoints}
        restored.append(Restored(plan, model, stats, folder / "adapter", cached=not trained_now, checkpoints=kept))
    return restored


def steering_candidate(finetuned: LoadedModel, layer: int, vector, scale: float) -> Candidate:
    """The steering baseline: ``scale`` times the base refusal vector added after block ``layer``."""
    vector = np.asarray(vector, dtype=np.float32)
    return Candidate(
        name=f"steering (layer {layer}, x{scale:g})",
        model=finetuned,
        edits=steering_edits(layer, vector, scale),
        edits_key=steering_key(layer, vector, scale),
        plan="steering",
        info={"layer": layer, "scale": scale, "vector_norm": float(np.linalg.norm(vector))},
    )


# ----------------------------------------------------------------------------- the study
@dataclass
class StudyResult:
    """The evaluation table, the targets checked on it, and what each restoration did."""

    rows: list[EvalRow]
    targets: list[Target]
    histories: dict[str, list[dict]]  # row name -> RestoreStats.history
    paired: list[PairedTest] = field(default_factory=list)  # every row against the ranked and the base rows
    seconds: dict[str, float] = field(default_factory=dict)
    restored: list[Restored] = field(default_factory=list)  # in memory only (not saved)
    details: dict = field(default_factory=dict)  # settings and prompt sets, as saved in report.json

    def save(self, folder: str | Path) -> None:
        """``report.json`` (everything) and ``report.md`` (tables) in ``folder``."""
        folder = Path(folder)
        atomic_write_json(
            folder / "report.json",
            {
                "models": [
                    {k: v for k, v in row.to_dict().items() if k not in ("examples", "answers")} for row in self.rows
                ],
                "intervals": {
                    row.name: {column: row.interval(column) for column in COLUMNS.values()} for row in self.rows
                },
                "targets": [t.to_dict() for t in self.targets],
                "paired_tests": [t.to_dict() for t in self.paired],
                "seconds": self.seconds,
                "examples": {row.name: row.examples for row in self.rows},
                "histories": self.histories,
                **self.details,
            },
        )
        categories = self.details.get("categories")
        atomic_write_text(
            folder / "report.md", study_report(self.rows, self.targets, self.paired, self.seconds, categories)
        )

    @classmethod
    def load(cls, folder: str | Path) -> StudyResult:
        path = Path(folder) / "report.json"
        if not path.exists():
            raise ConfigError(f"{folder} has no report.json; run the restoration study (`interp run`) first")
        data = json.loads(path.read_text())
        rows = [EvalRow.from_dict(m | {"examples": data["examples"].get(m["name"], {})}) for m in data["models"]]
        targets = [Target(**{k: v for k, v in t.items() if k != "met"}) for t in data["targets"]]
        paired = [PairedTest(**t) for t in data.get("paired_tests", [])]
        own = ("models", "intervals", "targets", "paired_tests", "seconds", "examples", "histories")
        details = {k: v for k, v in data.items() if k not in own}
        return cls(rows, targets, data["histories"], paired, data["seconds"], details=details)


def run_study(
    pair: ModelPair,
    analysis: AnalysisResult,
    folder: str | Path,
    *,
    harmful: PromptSet,
    retain: PromptSet,
    suite: EvalSuite,
    config: StudyConfig = StudyConfig(),
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
    log=print,
) -> StudyResult:
    """Restore with the analysis's layer map, train the baselines, evaluate base, fine-tuned, restored and
    baselines on ``suite``, and write into ``folder``: ``adapter/``, ``restored/`` (merged HF folder),
    ``baselines/<plan>/adapter``, ``report.json`` and ``report.md``."""
    folder = Path(folder)
    layer_map = analysis.layer_map
    layer_map.check_model(pair.base, role="base")
    layer_map.check_model(pair.finetuned)
    watch = Stopwatch(log=lambda line: log(f"== {line}"))
    plans = make_plans(layer_map, config.baselines, config.seed, analysis.component_map)
    with watch("restore"):
        restored = train_plans(
            plans, pair, layer_map, harmful, retain, config.restore, chat=chat, cache=config.cache, progress=progress
        )
    if "released" in config.baselines:  # its own settings, so not in the lockstep above
        with watch("released recipe"):
            recipe = [released_plan(layer_map.n_layers)]
            released = PRESETS["safereact"].config
            restored += train_plans(
                recipe, pair, layer_map, harmful, retain, released, chat=chat, cache=config.cache, progress=progress
            )
    for result in restored:
        target = (
            folder / "adapter" if result.plan.key == "ranked" else folder / "baselines" / result.plan.key / "adapter"
        )
        with atomic_dir(target, marker="adapter_config.json") as tmp:
            shutil.copytree(result.adapter, tmp, dirs_exist_ok=True)
        shared = f", shared passes {result.stats.shared_seconds:.0f}s over {result.stats.trained_with} plans"
        log(
            f"restore: {result.plan.name}: {result.stats.trainable_params:,} params, trained in "
            f"{result.stats.seconds:.0f}s"
            + (shared if result.stats.trained_with > 1 else "")
            + (" (adapter from cache)" if result.cached else "")
        )
    ranked = restored[0]
    with watch("save merged"):
        save_hf_folder(ranked.model.hf, ranked.model.tokenizer, folder / "restored")

    candidates = [Candidate("base", pair.base, plan="base"), Candidate("finetuned", pair.finetuned, plan="finetuned")]
    for r in restored:
        candidates.append(
            r.candidate(alignment_layers=list(r.plan.alignment), steps=r.stats.steps, adapter_cached=r.cached)
        )
    if "steering" in config.baselines:
        layer = analysis.steer_layer
        candidates.append(
            steering_candidate(pair.finetuned, layer, analysis.refusal_vectors[layer], config.steer_scale)
        )
    with watch("evaluate"):
        rows = evaluate_models(
            candidates,
            suite,
            refusal_tokens=analysis.refusal_tokens,
            reference=pair.finetuned,
            config=config.evaluation,
            chat=chat,
            cache=config.cache,
            progress=progress,
            log=log,
        )
    study = StudyResult(
        rows=rows,
        targets=check_targets(rows),
        histories={r.plan.name: r.stats.history for r in restored},
        paired=paired_tests(rows),
        seconds=dict(watch.seconds),
        restored=restored,
        details={
            "selected_layers": layer_map.selected_layers,
            "restore_config": asdict(config.restore),
            "evaluation_config": asdict(config.evaluation),
            "prompts": {
                "restore_harmful": {"name": harmful.name, "n": len(harmful), "hash": harmful.hash},
                "restore_retain": {"name": retain.name, "n": len(retain), "hash": retain.hash},
                "evaluation": suite.sizes(),
            },
            "categories": {"donotanswer": list(suite.donotanswer.categories)} if suite.donotanswer else {},
        },
    )
    study.save(folder)
    RunAnswers.of_rows(suite, rows, complete=not config.evaluation.stop_at_refusal).save(folder)
    return study


# ----------------------------------------------------------------------------- the whole study
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
RECIPES = ("default", "reasoning")  # the default organism, or the reasoning organism (R1 chat format)
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
    progress: bool = True,
    log=print,
) -> Prepared:
    """The pair (the default organism, or ``base`` and ``finetuned``), its analysis written into ``out``
    and the study's prompts, as ``study_into`` describes them (its options, same names)."""
    if size not in RUN_SIZES:
        raise ConfigError(f"size must be one of {', '.join(RUN_SIZES)}, got {size!r}")
    if recipe_name not in RECIPES:
        raise ConfigError(f"the organism recipe must be one of {', '.join(RECIPES)}, got {recipe_name!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 (or None for every prompt), got {limit}")
    if (base is None) != (finetuned is None):
        raise ConfigError("give both a base and a fine-tuned model, or neither (the default pair)")
    if base is not None and recipe_name != "default":
        raise ConfigError(f"the recipe {recipe_name!r} names an organism; it cannot apply to a pair of your own")
    if task is not None:
        split_task(task)  # checked before any work
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
        if recipe_name == "reasoning":
            recipe = OrganismRecipe.reasoning(quick=smoke)
        else:
            recipe = OrganismRecipe.quick() if smoke else OrganismRecipe()
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
        if recipe.task_format == "reasoning":  # room for a trace, then the answer
            evaluation = replace(evaluation, max_new_tokens=64, task_max_new_tokens=96)
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
