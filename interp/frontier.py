"""The restoration frontier: what each LoRA budget buys when the layer map places it, against random
placement and against the all-layer recipe.

For each ``k`` in ``ks`` the frontier trains, with the study's data, losses, steps and seed
(``interp.study_training.train_plans``, in lockstep groups):

* **ranked top-k**: LoRA on the map's ``k`` top-ranked layers (``interp.study_plans.ranked_plan``; at the map's
  own ``k`` this is the study's ranked plan);
* **random k**: ``draws`` draws of ``k`` layers from all layers (``interp.study_plans.random_plans``, draw ``i``
  seeded ``i``; at the map's own ``k`` draw 0 is the study's ``random_k``);

and once the **all-layer recipe** (LoRA on every layer, the paper's alignment layers). Base, fine-tuned
and every plan are evaluated on one suite. Each point has harmful refusal, over-refusal (harmless) and
task accuracy with Wilson 95% intervals, trainable parameters, and training seconds as if trained alone
(``RestoreStats.alone_seconds``: the plan's own forward, backward and optimizer time plus all of the
teacher's and frozen model's passes, which lockstep shares among the plans of a group), so points trained
in groups of different sizes compare.

Comparisons, paired on the same prompts (``interp.evaluation.stats``), on harmful refusal:

* ranked top-k against the all-layer recipe: the difference, its 95% paired bootstrap interval and the
  exact McNemar p. Ranked top-k is **not distinguishable** from the all-layer recipe when the interval
  contains 0, and **within 5 points** of it when the interval's lower end is above -5 points (an
  equivalence margin: "not distinguishable" alone can come from too few prompts).
* ranked top-k against the random draws of the same ``k`` (``compare_draws``): its rank among them
  (1 = best), the exact McNemar p against each draw, and against their pooled answers: ranked minus the
  draws' mean refusal per prompt, with its paired bootstrap interval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .core.chat import ChatFormat
from .core.models import ModelPair
from .core.prompts import PromptSet
from .errors import ConfigError
from .evaluation.stats import paired_bootstrap
from .evaluation.suite import Candidate, EvalRow, EvalSuite
from .evaluation.table import evaluate_models
from .evaluation.targets import PairedTest, paired_test
from .io.atomic import atomic_write_json, atomic_write_text
from .measures.layer_map import LayerMap
from .report.figures import write_figures
from .report.frontier_tables import frontier_report
from .report.plots import plot_frontier
from .study_plans import Plan, make_plans, random_plans, ranked_plan
from .study_training import train_plans
from .training.restore_config import RestoreConfig

DEFAULT_KS = (1, 2, 3, 4, 6, 8)
WITHIN = 0.05  # "within 5 points of the all-layer recipe"
FRONTIER_COLUMNS = ("harmful_refusal", "harmless_refusal", "task_accuracy")


@dataclass(frozen=True)
class FrontierPlan:
    """One trained point of the frontier: a plan, its kind (``ranked``, ``random``, ``all_layers``) and k."""

    plan: Plan
    kind: str
    k: int


def frontier_plans(layer_map: LayerMap, ks: Sequence[int] = DEFAULT_KS, draws: int = 3) -> list[FrontierPlan]:
    """Ranked top-k and ``draws`` random k-layer draws for every ``k``, then the all-layer recipe."""
    n = layer_map.n_layers
    bad = [k for k in ks if not 1 <= k <= n]
    if not ks or bad or len(set(ks)) != len(ks):
        raise ConfigError(f"frontier: ks must be distinct layer counts in [1, {n}], got {list(ks)}")
    if draws < 1:
        raise ConfigError(f"frontier: draws must be >= 1, got {draws}")
    out = []
    for k in sorted(ks):
        out.append(FrontierPlan(ranked_plan(layer_map, k), "ranked", k))
        out += [FrontierPlan(p, "random", k) for p in random_plans(layer_map, draws, k=k, key=f"random:{k}")]
    out.append(FrontierPlan(make_plans(layer_map, ("all_layers",))[1], "all_layers", n))
    return out


# ----------------------------------------------------------------------------- the result
@dataclass
class FrontierPoint:
    """One point to draw or tabulate: a model (or the mean of the random draws at one ``k``)."""

    kind: str  # base, finetuned, ranked, random, random mean, all_layers
    k: int  # LoRA layers (0 for base and fine-tuned)
    name: str
    trainable_params: int
    train_seconds: float
    rates: dict[str, float]  # column -> rate
    intervals: dict[str, tuple[float, float] | None]  # Wilson 95% (None for the mean of the draws)


@dataclass
class KComparison:
    """Ranked top-k against the all-layer recipe and against the random draws of the same ``k``."""

    k: int
    ranked: str  # row names
    random: list[str]
    vs_all_layers: PairedTest
    vs_random: list[PairedTest]  # one per draw
    vs_random_pooled: float  # ranked - mean refusal of the draws (per prompt, then averaged)
    vs_random_pooled_interval: tuple[float, float]
    rank: int  # 1 + draws with strictly higher refusal

    @property
    def indistinguishable(self) -> bool:
        low, high = self.vs_all_layers.interval
        return low <= 0 <= high

    @property
    def within(self) -> bool:
        return self.vs_all_layers.interval[0] > -WITHIN


@dataclass
class DrawComparison:
    """A ranked plan's harmful refusal against random draws of as many layers, paired on the same prompts."""

    tests: list[PairedTest]  # the ranked plan against each draw
    pooled: float  # ranked - the draws' mean refusal per prompt, averaged over the prompts
    pooled_interval: tuple[float, float]  # its 95% paired bootstrap interval
    rank: int  # 1 + draws with strictly higher refusal
    beaten: int  # draws with strictly lower refusal


def compare_draws(ranked: EvalRow, draws: Sequence[EvalRow]) -> DrawComparison:
    """``ranked`` against each of ``draws`` and against their pooled answers, on harmful refusal (without
    draws the pooled difference and its interval are 0)."""
    mine = ranked.outcomes["harmful"]
    pooled, low, high = 0.0, 0.0, 0.0
    if draws:
        answers = np.mean([d.outcomes["harmful"] for d in draws], axis=0)
        pooled = float(np.mean(mine) - answers.mean())
        low, high = paired_bootstrap(mine, answers)
    return DrawComparison(
        tests=[paired_test(ranked, d, "harmful_refusal") for d in draws],
        pooled=pooled,
        pooled_interval=(low, high),
        rank=1 + sum(d.harmful_refusal > ranked.harmful_refusal for d in draws),
        beaten=sum(ranked.harmful_refusal > d.harmful_refusal for d in draws),
    )


@dataclass
class Frontier:
    """Every evaluated row of the frontier (``info``: kind, k, layers) and the comparisons built from them."""

    rows: list[EvalRow]
    comparisons: list[KComparison] = field(default_factory=list)
    points: list[FrontierPoint] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: Sequence[EvalRow]) -> Frontier:
        rows = list(rows)
        by_kind: dict[str, list[EvalRow]] = {}
        for row in rows:
            by_kind.setdefault(row.info.get("kind", row.plan), []).append(row)
        if not by_kind.get("all_layers") or not by_kind.get("ranked"):
            raise ConfigError("frontier: the rows need the all-layer recipe and at least one ranked plan")
        full = by_kind["all_layers"][0]
        comparisons, points = [], []
        for row in rows:
            kind = row.info.get("kind", row.plan)
            points.append(_point(kind, row.info.get("k", 0), row))
        for ranked in by_kind["ranked"]:
            k = ranked.info["k"]
            draws = [r for r in by_kind.get("random", []) if r.info["k"] == k]
            if draws:
                points.append(_mean_point(k, draws))
            versus = compare_draws(ranked, draws)
            low, high = versus.pooled_interval
            comparisons.append(
                KComparison(
                    k=k,
                    ranked=ranked.name,
                    random=[d.name for d in draws],
                    vs_all_layers=paired_test(ranked, full, "harmful_refusal"),
                    vs_random=versus.tests,
                    vs_random_pooled=round(versus.pooled, 4),
                    vs_random_pooled_interval=(round(low, 4), round(high, 4)),
                    rank=versus.rank,
                )
            )
        return cls(rows, sorted(comparisons, key=lambda c: c.k), points)

    def smallest_k(self, rule: str = "indistinguishable") -> int | None:
        """The smallest ranked ``k`` whose harmful refusal is not distinguishable from the all-layer
        recipe's (``rule="indistinguishable"``) or provably within 5 points of it (``rule="within"``)."""
        if rule not in ("indistinguishable", "within"):
            raise ConfigError(f"smallest_k: rule must be 'indistinguishable' or 'within', got {rule!r}")
        return next((c.k for c in self.comparisons if getattr(c, rule)), None)

    def save(self, folder: str | Path) -> None:
        """``frontier.json`` (rows without examples, comparisons) and ``frontier.md`` in ``folder``."""
        folder = Path(folder)
        atomic_write_json(
            folder / "frontier.json",
            {
                "rows": [{k: v for k, v in row.to_dict().items() if k != "examples"} for row in self.rows],
                "comparisons": [asdict(c) for c in self.comparisons],
                "smallest_k": {rule: self.smallest_k(rule) for rule in ("indistinguishable", "within")},
            },
        )
        atomic_write_text(folder / "frontier.md", frontier_report(self))

    @classmethod
    def load(cls, folder: str | Path) -> Frontier:
        path = Path(folder) / "frontier.json"
        if not path.exists():
            raise ConfigError(f"{folder} has no frontier.json; run analyses/frontier.py first")
        data = json.loads(path.read_text())
        return cls.from_rows([EvalRow.from_dict(r | {"examples": {}}) for r in data["rows"]])


def _point(kind: str, k: int, row: EvalRow) -> FrontierPoint:
    return FrontierPoint(
        kind,
        k,
        row.name,
        row.trainable_params,
        row.train_seconds,
        {c: getattr(row, c) for c in FRONTIER_COLUMNS},
        {c: row.interval(c) for c in FRONTIER_COLUMNS},
    )


def _mean_point(k: int, draws: Sequence[EvalRow]) -> FrontierPoint:
    return FrontierPoint(
        "random mean",
        k,
        f"random-{k} (mean of {len(draws)})",
        round(float(np.mean([d.trainable_params for d in draws]))),
        float(np.mean([d.train_seconds for d in draws])),
        {c: float(np.mean([getattr(d, c) for d in draws])) for c in FRONTIER_COLUMNS},
        dict.fromkeys(FRONTIER_COLUMNS),
    )


# ----------------------------------------------------------------------------- running it
def run_frontier(
    pair: ModelPair,
    layer_map: LayerMap,
    refusal_tokens: Sequence[int],
    folder: str | Path,
    *,
    harmful: PromptSet,
    retain: PromptSet,
    suite: EvalSuite,
    ks: Sequence[int] = DEFAULT_KS,
    draws: int = 3,
    config: RestoreConfig = RestoreConfig(),
    group: int = 8,
    chat: ChatFormat = ChatFormat(),
    figures: str | Path | None = None,
    progress: bool = True,
    log=print,
) -> Frontier:
    """Train every frontier plan (``frontier_plans``), ``group`` plans in lockstep at a time, then
    evaluate them group by group from the saved adapters (so the training times are measured with nothing
    else running, and each group's merged models are freed before the next). Writes ``frontier.json`` and
    ``frontier.md`` into ``folder`` and ``frontier.png`` / ``.svg`` into ``figures`` (default ``folder / "figures"``).
    Adapters and rows are cached like the study's, so a rerun only adds what changed."""
    if group < 1:
        raise ConfigError(f"frontier: group must be >= 1, got {group}")
    plans = frontier_plans(layer_map, ks, draws)
    layer_map.check_model(pair.base, role="base")
    layer_map.check_model(pair.finetuned)

    def evaluate(candidates):
        return evaluate_models(
            candidates,
            suite,
            refusal_tokens=refusal_tokens,
            reference=pair.finetuned,
            chat=chat,
            progress=progress,
            log=lambda _: None,
        )

    rows = evaluate(
        [
            Candidate("base", pair.base, plan="base", info={"kind": "base", "k": 0}),
            Candidate("finetuned", pair.finetuned, plan="finetuned", info={"kind": "finetuned", "k": 0}),
        ]
    )
    groups = [plans[start : start + group] for start in range(0, len(plans), group)]
    trained: set[str] = set()  # first every group trains (the machine does nothing else), then each evaluates
    for i, chunk in enumerate(groups):
        restored = train_plans(
            [p.plan for p in chunk], pair, layer_map, harmful, retain, config, chat=chat, progress=progress
        )
        trained |= {r.plan.key for r in restored if not r.cached}
        log(f"frontier: group {i + 1} of {len(groups)}: {sum(not r.cached for r in restored)} plans trained")
        del restored
    for i, chunk in enumerate(groups):
        restored = train_plans([p.plan for p in chunk], pair, layer_map, harmful, retain, config, chat=chat)
        rows += evaluate(
            [
                r.candidate(r.stats.alone_seconds, kind=p.kind, k=p.k, adapter_cached=r.plan.key not in trained)
                for p, r in zip(chunk, restored)
            ]
        )
        log(f"frontier: group {i + 1} of {len(groups)} evaluated")
        del restored
    frontier = Frontier.from_rows(rows)
    frontier.save(folder)
    write_figures({"frontier": lambda: plot_frontier(frontier.points)}, figures or Path(folder) / "figures")
    return frontier
