"""Which component restores best: the per-layer ground truth of ``interp.protocol.layers`` one level finer,
for each block's attention and MLP (``interp protocol --components``; dev parts only).

**Ground truth**: for every block ``l``, component ``c`` (attention: q/k/v/o; MLP: gate/up/down) and seed
``s``, a LoRA on that component alone, on the protocol's equal footing (aligned at the shared layers, the
short budget, the same objective), at the single-component family's own lr (the file's rule on dev, seed
0, over the attention and MLP of the blocks at depths n/4, n/2 and 3n/4):

    gain_{l,c,s} = harmful refusal(component (l, c) restored) - harmful refusal(fine-tuned)   (judged, dev)

**Candidates**, one value per component: the component map's score (``ComponentAttribution.score``) and its
raw patch effect; **validity**: Spearman's rho of each with the mean gain over seeds (95% interval, the
components resampled), and where the component map's top ``k`` stands among all components by gain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation.stats import bootstrap_interval, spearman
from ..evaluation.suite import EvalSuite
from ..io.atomic import atomic_write_json, atomic_write_text
from ..measures.components import COMPONENT_MODULES, COMPONENTS
from ..report.tables import markdown_table
from ..study_plans import Plan
from ..training.restore_config import RestoreConfig, paper_alignment_layers
from .bench import Bench, choose_setting, claim_suite, safe_set, with_lr
from .design import Protocol


@dataclass
class ComponentValidity:
    """The per-component ground truth on dev and the candidates' agreement with it (module docstring)."""

    lr: float
    lr_trials: list[dict]
    seeds: list[int]
    components: list[str]  # "attn 3", "mlp 3", ... in the order of every per-component list
    gain: list[list[float]]  # [seed][component]
    finetuned: float
    candidates: dict[str, list[float]]  # name -> [component]
    chosen: list[str]  # the component map's top k

    @property
    def mean_gain(self) -> np.ndarray:
        return np.asarray(self.gain).mean(0)

    def rho(self, name: str) -> tuple[float, tuple[float, float]]:
        x = np.asarray(self.candidates[name], dtype=float)
        return spearman(x, self.mean_gain), bootstrap_interval(spearman, x, self.mean_gain)

    def rank_of_chosen(self) -> list[int]:
        """Each of the component map's chosen components' rank by mean gain (1 = the largest gain)."""
        order = [self.components[i] for i in np.argsort(-self.mean_gain, kind="stable")]
        return [order.index(c) + 1 for c in self.chosen]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        atomic_write_json(folder / "components.json", asdict(self))
        atomic_write_text(folder / "components.md", components_report(self))


def single_component_plans(n_layers: int, alignment: list[int]) -> list[Plan]:
    """LoRA on one component each (block order, attention first), aligned at ``alignment``."""
    plans = []
    for layer in range(n_layers):
        for name in COMPONENTS:
            where = ((layer, COMPONENT_MODULES[name]),)
            plans.append(Plan(f"single-{name}-{layer}", f"{name} {layer}", (layer,), tuple(alignment), where))
    return plans


def component_validity(
    bench: Bench, suite: EvalSuite, *, protocol: Protocol, restore: RestoreConfig = RestoreConfig(),
    seeds: tuple[int, ...] | None = None,
) -> ComponentValidity:  # fmt: skip
    """The ground truth and the candidates' validity on ``suite``'s dev parts (module docstring)."""
    analysis = bench.analysis
    if analysis.components is None or analysis.component_map is None:
        raise ConfigError("component_validity needs an analysis with components (AnalysisConfig.components)")
    n = analysis.layer_map.n_layers
    seeds = tuple(seeds or protocol.seeds)
    plans = single_component_plans(n, paper_alignment_layers(n))
    dev = claim_suite(suite, "dev")
    short = replace(restore, steps=protocol.budgets[0])
    tuning = [p for p in plans if p.layers[0] in (n // 4, n // 2, 3 * n // 4)]
    tried = [with_lr(p, lr) for lr in protocol.lr_grid for p in tuning]
    rows = bench.judged(tried, replace(short, seed=seeds[0]), dev, label="single components: lr on dev")
    by_lr = {lr: [r for p, r in zip(tried, rows[2:]) if p.lr == lr] for lr in protocol.lr_grid}
    lr, trials = choose_setting("single component", by_lr, rows[0], rows[1], safe_set(dev), protocol.margin)
    gain = []
    for seed in seeds:
        rows = bench.judged([with_lr(p, lr) for p in plans], replace(short, seed=seed), dev,
                            label=f"single components, seed {seed}")  # fmt: skip
        gain.append([r.harmful_refusal - rows[1].harmful_refusal for r in rows[2:]])
    attribution = analysis.components
    flat = lambda a: [float(a[COMPONENTS.index(name), layer]) for layer in range(n) for name in COMPONENTS]  # noqa: E731
    candidates = {
        "component score": flat(attribution.score),
        "component patch effect": np.nan_to_num(flat(attribution.patch_effect)).tolist(),
    }
    chosen = [f"{name} {layer}" for layer, modules in analysis.component_map.modules.items() for name in COMPONENTS
              if set(COMPONENT_MODULES[name]) <= set(modules)]  # fmt: skip
    return ComponentValidity(lr, trials, list(seeds), [p.name for p in plans], gain, rows[1].harmful_refusal,
                             candidates, chosen)  # fmt: skip


def components_report(result: ComponentValidity) -> str:
    """``components.md``: the gain per component (mean and seed range), each candidate's rho, and where the
    component map's choice stands."""
    g = np.asarray(result.gain)
    order = np.argsort(-g.mean(0), kind="stable")
    top = []
    for i in order[:10]:
        low, high = 100 * g[:, i].min(), 100 * g[:, i].max()
        top.append([result.components[i], f"{100 * g[:, i].mean():+.1f}", f"{low:+.1f} to {high:+.1f}"])
    rhos = []
    for name in result.candidates:
        rho, (low, high) = result.rho(name)
        rhos.append([name, "n/a" if math.isnan(rho) else f"{rho:+.2f} [{low:+.2f}, {high:+.2f}]"])
    ranks = ", ".join(
        f"{c} (rank {r} of {len(result.components)})" for c, r in zip(result.chosen, result.rank_of_chosen())
    )
    return "\n".join([
        "# Which component restores best (`interp protocol --components`, dev parts)",
        "",
        f"LoRA on one component at a time, seeds {result.seeds}, lr {result.lr:g} (chosen on dev); the fine-tuned"
        f" model refuses {100 * result.finetuned:.1f}% of the dev harmful prompts.",
        "",
        markdown_table(["component (10 largest gains)", "gain, mean (points)", "seed range"], top),
        "",
        markdown_table(["candidate", "Spearman rho with the gain [95% CI]"], rhos),
        "",
        f"The component map's choice: {ranks}.",
        "",
    ])  # fmt: skip
