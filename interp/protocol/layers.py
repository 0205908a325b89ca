"""Which single block restores best: a per-layer ground truth of restoration, and the candidate rankings
judged against it.

**Ground truth**, on the dev parts: for every block ``l`` and training seed ``s``, a LoRA on block ``l``
alone, on the protocol's equal footing (aligned at the shared layers, the short budget, the same
objective), at the single-block family's own lr (the file's lr rule on dev, seed 0, over three tuning
blocks at depths n/4, n/2 and 3n/4):

    gain_{l,s}    = harmful refusal(block l restored) - harmful refusal(fine-tuned)     (judged, dev)
    matched_{l,s} = harmful refusal of block l's model at the base's over-refusal         (refusal score)

**Candidates**, one value per block:

* ``score``: the layer map's score, and its three terms ``suppression``, ``causal``, ``amplification``
  (``interp.measures.layer_map``: increments, each scaled by its own maximum);
* ``patch effect``: the causal swap's raw effect at block ``l`` (``interp.measures.causal``; 0 where the
  sweep skipped it);
* ``gradient``: ``||dL/dB||^2`` of the restoration loss at step 0 with respect to block ``l``'s zero-
  initialised LoRA B (``RestoreStats.first_gradient``), mean over the seeds' first batches: to first
  order, how fast a LoRA there can lower the loss.

**Validity**: Spearman's rho of each candidate with the mean gain over seeds, its 95% interval from a
bootstrap over blocks (``interp.evaluation.stats``); the ground truth's own stability is the mean rho
between two seeds' gains.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..evaluation.stats import bootstrap_interval, spearman
from ..evaluation.table import EvalSuite
from ..io import atomic_write_json, atomic_write_text
from ..measures.layer_map import score_components
from ..report.figures import save_figure
from ..report.plots import plot_layer_validity
from ..report.tables import markdown_table
from ..study import Plan
from ..training.restore import RestoreConfig, paper_alignment_layers
from .bench import Bench, choose_setting, claim_suite, safe_set, with_lr
from .claims import matched, rate
from .design import Protocol


@dataclass
class LayerValidity:
    """The per-layer ground truth on dev and every candidate's agreement with it (module docstring)."""

    lr: float  # the single-block family's lr, chosen on dev
    lr_trials: list[dict]
    seeds: list[int]
    gain: list[list[float]]  # [seed][layer]
    matched: list[list[float]]  # [seed][layer]
    over: list[list[float]]  # [seed][layer]: over-refusal of block l's model (judged, dev)
    finetuned: float  # the fine-tuned model's dev harmful refusal
    candidates: dict[str, list[float]]  # name -> [layer]

    @property
    def mean_gain(self) -> np.ndarray:
        return np.asarray(self.gain).mean(0)

    def rho(self, name: str) -> tuple[float, tuple[float, float]]:
        """Spearman's rho of candidate ``name`` with the mean gain, and its bootstrap interval over blocks."""
        x, y = np.asarray(self.candidates[name], dtype=float), self.mean_gain
        return spearman(x, y), bootstrap_interval(spearman, x, y)

    def stability(self) -> float:
        """The mean Spearman rho between two seeds' gains (NaN with one seed)."""
        g = np.asarray(self.gain)
        pairs = [spearman(g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g))]
        return float(np.nanmean(pairs)) if pairs else math.nan

    def save(self, folder: str | Path) -> None:
        """``layers.json``, ``layers.md`` and ``figures/layer_validity`` in ``folder``."""
        folder = Path(folder)
        atomic_write_json(folder / "layers.json", asdict(self))
        atomic_write_text(folder / "layers.md", layers_report(self))
        gain = np.asarray(self.gain)
        sd = gain.std(0, ddof=1) if len(gain) > 1 else np.zeros(gain.shape[1])
        fig = plot_layer_validity(gain.mean(0), sd, {name: self.candidates[name] for name in ("score", "gradient")})
        save_figure(fig, folder / "figures", "layer_validity")
        plt.close(fig)

    @classmethod
    def load(cls, folder: str | Path) -> LayerValidity:
        return cls(**json.loads((Path(folder) / "layers.json").read_text()))


def single_block_plans(n_layers: int, alignment: list[int]) -> list[Plan]:
    """LoRA on one block each, aligned at ``alignment``."""
    return [Plan(f"single-{layer}", f"block {layer}", (layer,), tuple(alignment)) for layer in range(n_layers)]


def layer_validity(
    bench: Bench,
    suite: EvalSuite,
    *,
    protocol: Protocol,
    restore: RestoreConfig = RestoreConfig(),
    seeds: tuple[int, ...] | None = None,
) -> LayerValidity:
    """The ground truth and the candidates' validity on ``suite``'s dev parts (module docstring)."""
    analysis = bench.analysis
    n = analysis.layer_map.n_layers
    seeds = tuple(seeds or protocol.seeds)
    plans = single_block_plans(n, paper_alignment_layers(n))
    dev = claim_suite(suite, "dev")
    safe = safe_set(dev)
    short = protocol.budgets[0]
    tuning = [plans[n // 4], plans[n // 2], plans[3 * n // 4]]
    tried = [with_lr(p, lr) for lr in protocol.lr_grid for p in tuning]
    rows = bench.judged(tried, replace(restore, steps=short, seed=seeds[0]), dev, label="single blocks: lr on dev")
    base, ft = rows[0], rows[1]
    by_lr = {lr: [r for p, r in zip(tried, rows[2:]) if p.lr == lr] for lr in protocol.lr_grid}
    lr, trials = choose_setting("single block", by_lr, base, ft, safe, protocol.margin)
    bench.log(f"layers: single-block lr on dev {lr:g}")
    gain, matches, over, gradients = [], [], [], []
    for seed in seeds:
        rows = bench.judged([with_lr(p, lr) for p in plans], replace(restore, steps=short, seed=seed), dev,
                            label=f"single blocks, seed {seed}")  # fmt: skip
        base, ft, mine = rows[0], rows[1], rows[2:]
        gain.append([r.harmful_refusal - ft.harmful_refusal for r in mine])
        matches.append([float(np.mean(matched(base, r, safe))) for r in mine])
        over.append([rate(r, safe) for r in mine])
        gradients.append([(r.info.get("first_gradient") or [math.nan] * n)[layer] for layer, r in enumerate(mine)])
    terms = score_components(analysis.metrics, analysis.sweep)
    candidates = {
        "score": list(analysis.layer_map.scores),
        **{name: values.tolist() for name, values in terms.items()},
        "patch effect": np.nan_to_num(np.asarray(analysis.sweep.patch_effect, dtype=float)).tolist(),
        "gradient": np.asarray(gradients).mean(0).tolist(),
    }
    return LayerValidity(lr, trials, list(seeds), gain, matches, over, ft.harmful_refusal, candidates)


def layers_report(result: LayerValidity) -> str:
    """``layers.md``: the candidates' validity, then the ground truth per block."""
    validity, best_rho = [], {}
    for name in result.candidates:
        rho, (low, high) = result.rho(name)
        top3 = sorted(np.argsort(-np.asarray(result.candidates[name]), kind="stable")[:3].tolist())
        validity.append([name, f"{rho:+.2f}", f"[{low:+.2f}, {high:+.2f}]", str(top3)])
        best_rho[name] = -math.inf if math.isnan(rho) else rho
    chosen = max(best_rho, key=best_rho.get)
    gain, matches, over = (np.asarray(x) for x in (result.gain, result.matched, result.over))
    best = sorted(np.argsort(-gain.mean(0), kind="stable")[:3].tolist())
    per_layer = [
        [str(layer), f"{100 * gain[:, layer].mean():+.1f}",
         f"{100 * gain[:, layer].std(ddof=1):.1f}" if len(gain) > 1 else "n/a",
         f"{100 * matches[:, layer].mean():.1f}", f"{100 * over[:, layer].mean():.1f}",
         *(f"{result.candidates[name][layer]:.3g}" for name in result.candidates)]
        for layer in range(gain.shape[1])
    ]  # fmt: skip
    return "\n".join([
        "# Which single block restores best (dev parts)",
        "",
        f"LoRA on one block at a time, {len(result.seeds)} seeds (lr {result.lr:g}, chosen on dev); the fine-tuned"
        f" model refuses {100 * result.finetuned:.1f}% of dev harmful prompts. Ground truth's seed-to-seed"
        f" stability (mean Spearman between seeds): {result.stability():.2f}. Best three single blocks: {best}.",
        "",
        markdown_table(["candidate", "Spearman rho with the gain", "95% interval (blocks resampled)", "its top 3"],
                       validity),  # fmt: skip
        "",
        f"By the protocol file's [ranking] rule (the highest dev rho), the default ranking becomes: **{chosen}**.",
        "",
        markdown_table(["block", "gain (points)", "seed SD", "harmful at the base's over-refusal (%)",
                        "over-refusal (%)", *result.candidates], per_layer),  # fmt: skip
        "",
    ])  # fmt: skip
