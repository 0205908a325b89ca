"""The protocol's design: ``Protocol``, read from ``interp/data/protocol.toml``, and its plans by family."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError
from ..measures.result import AnalysisResult
from ..study_plans import Plan, distinct_sets, make_plans, random_plans
from ..training.restore_config import paper_alignment_layers

PROTOCOL = Path(__file__).resolve().parent.parent / "data" / "protocol.toml"
FAMILIES = ("ranked", "bottom", "all_layers", "draws")


@dataclass(frozen=True)
class Protocol:
    """The settings of ``protocol.toml`` the runner follows (the rest of the file is its prose)."""

    k: int = 3
    draws: int = 19
    draws_in_depth_range: int = 9
    seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[int, int] = (24, 96)
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    checkpoints: tuple[int, ...] = (6, 12, 24, 48, 96)
    long_budget_draws: int = 5
    tuning_draws: int = 3
    margin: float = 0.05  # H3's and the lr rule's 5 points
    alpha: float = 0.05

    def __post_init__(self) -> None:
        short, long = self.budgets
        if not 1 <= self.draws_in_depth_range <= self.draws or not self.seeds or not self.lr_grid:
            raise ConfigError("protocol: needs draws >= draws_in_depth_range >= 1, seeds and an lr grid")
        if not 1 <= short <= long or any(not 1 <= c <= long for c in self.checkpoints):
            raise ConfigError(f"protocol: budgets {self.budgets} and checkpoints {self.checkpoints} do not fit")

    @classmethod
    def load(cls, path: str | Path = PROTOCOL) -> Protocol:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"protocol file {path} cannot be read ({error})") from None
        plans, training = data["plans"], data["training"]
        long_draws = [p for p in training["long_budget_plans"] if p.startswith("draws[:")]
        return cls(
            k=plans["k"],
            draws=plans["draws"],
            draws_in_depth_range=plans["draws_in_depth_range"],
            seeds=tuple(training["seeds"]),
            budgets=tuple(training["budgets"]),
            lr_grid=tuple(training["lr_grid"]),
            checkpoints=tuple(training["checkpoints"]),
            long_budget_draws=int(long_draws[0][7:-1]) if long_draws else 0,
            alpha=data["statistics"]["alpha"],
        )

    def tiny(self) -> Protocol:
        """The same steps at a size for tests and CI (two seeds, three draws, a few steps)."""
        return replace(
            self, draws=3, draws_in_depth_range=1, seeds=(0, 1), budgets=(2, 4), lr_grid=(1e-3, 1e-2),
            checkpoints=(2, 4), long_budget_draws=1, tuning_draws=1,
        )  # fmt: skip


def protocol_plans(analysis: AnalysisResult, protocol: Protocol) -> dict[str, list[Plan]]:
    """Every plan of the protocol by family (module docstring), aligned at the shared layers; ``tuning``
    holds the draws that only choose the draws' lr."""
    layer_map = analysis.layer_map
    n = layer_map.n_layers
    shared = paper_alignment_layers(n)
    ranked, every, bottom = make_plans(layer_map, ("all_layers", "bottom_k"))
    taken = [list(ranked.layers), list(bottom.layers)]  # the depth range is the narrower pool: drawn first
    low, deepest = min(ranked.layers), max(ranked.layers)
    # amendment 7: a depth range with fewer distinct sets than asked gives all it has; the rest come from all layers
    in_range = min(protocol.draws_in_depth_range, distinct_sets(n, len(ranked.layers), low, deepest, taken))
    deep = random_plans(layer_map, in_range, seed=10_000, low=low, key="draw-deep", holding=deepest, exclude=taken)
    taken += [list(p.layers) for p in deep]
    wide = random_plans(layer_map, protocol.draws - in_range, key="draw", exclude=taken)
    taken += [list(p.layers) for p in wide]
    draws = wide + deep
    tuning = random_plans(layer_map, protocol.tuning_draws, seed=20_000, key="tune", exclude=taken)
    families = {"ranked": [ranked], "bottom": [bottom], "all_layers": [every], "draws": draws, "tuning": tuning}
    return {family: [p.aligned_at(shared) for p in plans] for family, plans in families.items()}


def family_of(key: str) -> str:
    """The family of a row's plan key (``ranked@0.003`` -> ranked, ``draw-deep-2@0.01`` -> draws;
    base, finetuned and released stay themselves)."""
    name = key.split("@")[0]
    if name.startswith(("draw", "tune")):
        return "draws"
    return {"bottom_k": "bottom"}.get(name, name)
