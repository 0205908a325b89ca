"""The study's plans (``Plan``): where one restoration puts LoRA and where it aligns hidden states.

``make_plans`` builds the study's ranked plan and its trained baselines from a layer map (``interp.study``
describes each); ``released_plan``, ``ranked_plan`` and ``random_plans`` build the plans the protocol and
the restoration frontier compare. ``interp.study_training`` trains them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .errors import ConfigError
from .measures.layer_map import LayerMap
from .training.restore_config import Placement, paper_alignment_layers

# the baselines a study can run beside the ranked plan (``StudyConfig.baselines``; ``steering`` trains none)
BASELINES = ("all_layers", "random_k", "bottom_k", "components", "steering", "released")


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


def distinct_sets(
    n_layers: int, k: int, low: int = 0, holding: int | None = None, exclude: Sequence[Sequence[int]] = ()
) -> int:
    """How many distinct ``k``-sets of layers ``random_plans`` can draw from ``low .. n_layers - 1`` (each
    holding ``holding`` if given), none of them in ``exclude``."""
    pool = [layer for layer in range(low, n_layers) if layer != holding]
    fixed = set() if holding is None else {holding}
    drawable = set(pool) | fixed
    reachable = {tuple(sorted(x)) for x in exclude if len(set(x)) == k and fixed <= set(x) <= drawable}
    return math.comb(len(pool), k - len(fixed)) - len(reachable)


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
    possible = distinct_sets(n, k, low, holding, exclude)
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
