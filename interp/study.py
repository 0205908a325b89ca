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
* ``steering``: no training: the base model's refusal direction is added to the fine-tuned model's
  residual stream at every position while it generates: the direction selected over (layer, position) as
  Arditi et al. do (``interp.measures.positions``), after its block; without a selection, the
  last-position vector at the analysis's best add layer.

The plans are built by ``interp.study_plans`` and trained (in lockstep, cached) by
``interp.study_training``; ``interp.default_run`` runs the whole study on the default pair.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .core.chat import ChatFormat
from .core.models import LoadedModel, ModelPair
from .core.prompts import PromptSet
from .core.sources import save_hf_folder
from .errors import ConfigError
from .evaluation.rejudge import RunAnswers
from .evaluation.suite import COLUMNS, Candidate, EvalConfig, EvalRow, EvalSuite
from .evaluation.table import evaluate_models
from .evaluation.targets import PairedTest, Target, check_targets, paired_tests
from .io.atomic import atomic_dir, atomic_write_json, atomic_write_text
from .io.stopwatch import Stopwatch
from .measures.causal import steering_edits, steering_key
from .measures.result import AnalysisResult
from .report.study_tables import study_report
from .study_plans import BASELINES, make_plans, released_plan
from .study_training import Restored, train_plans
from .training.restore_config import PRESETS, RestoreConfig

LOOK_BASELINES = BASELINES[:-1]  # the released recipe (400 steps; 38-49 min on 2 CPU cores) runs in --full


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


def steering_candidate(finetuned: LoadedModel, layer: int, vector, scale: float, where: str = "") -> Candidate:
    """The steering baseline: ``scale`` times the base refusal vector added after block ``layer`` at every
    position (``where`` names the vector's origin; default: the layer)."""
    vector = np.asarray(vector, dtype=np.float32)
    return Candidate(
        name=f"steering ({where or f'layer {layer}'}, x{scale:g})",
        model=finetuned,
        edits=steering_edits(layer, vector, scale),
        edits_key=steering_key(layer, vector, scale),
        plan="steering",
        info={"layer": layer, "scale": scale, "vector_norm": float(np.linalg.norm(vector))},
    )


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
        layer, vector, where = analysis.steering_direction()
        candidates.append(steering_candidate(pair.finetuned, layer, vector, config.steer_scale, where))
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
