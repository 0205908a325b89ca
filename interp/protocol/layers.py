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

* ``evidence``: the causal increment in log-odds, with the representational terms added only where their
  interval lies above zero (``interp.measures.evidence``), on ``EVIDENCE_PROMPTS`` analysis-side prompts;
* ``Safe LoRA cosine``: minus a block's mean Safe LoRA cosine (``interp.training.safe_lora.cosine_layer_map``), a
  weight-space map; it needs the unaligned source.

**Validity**: Spearman's rho of each candidate with the mean gain over seeds (and with the matched
refusal), its 95% interval from a bootstrap over blocks (``interp.evaluation.stats``); the ground truth's
own stability is the mean rho between two seeds' gains.

**On test** (``layer_validity_on_test``): the same single-block trainings (the dev study's lr and seeds;
cached) judged on the test parts of the sets the ground truth reads (harmful, and XSTest safe for the
over-refusal and the matched threshold), and the dev study's candidates' rho with that gain: the
out-of-sample check of the ranking chosen on dev.

**Sets** (seed 0, dev): ``greedy`` forward selection (``GREEDY_STEPS`` steps; each trains every one-block
extension of the current set for ``GREEDY_TRAIN_STEPS`` steps and keeps the one with the highest harmful
refusal at the base's over-refusal, read from refusal scores alone); and the set check: every pair and
triple of the ``SET_CHECK_TOP`` best single blocks, at the short budget, judged, so that each candidate's
top 2 and top 3 can be put beside the best pair and triple found.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..analyze import AnalysisConfig, AnalysisPrompts, capture_pair
from ..core.generate import refusal_scores
from ..core.models import LoadedModel
from ..errors import ConfigError
from ..evaluation.stats import bootstrap_interval, matched_refusal, spearman
from ..evaluation.suite import EvalSuite
from ..io.atomic import atomic_write_json, atomic_write_text
from ..measures.causal import causal_sweep
from ..measures.compare import PairActivations
from ..measures.evidence import Evidence, evidence
from ..measures.layer_map import score_components
from ..report.figures import save_figure
from ..report.plots import plot_layer_validity
from ..report.tables import markdown_table
from ..study_plans import Plan
from ..training.restore_config import RestoreConfig, paper_alignment_layers
from ..training.safe_lora import cosine_layer_map, safe_lora_cosines
from .bench import Bench, choose_setting, claim_suite, safe_set, with_lr
from .claims import matched, rate
from .design import Protocol

EVIDENCE_PROMPTS = 64
GREEDY_STEPS, GREEDY_TRAIN_STEPS = 3, 8
SET_CHECK_TOP = 6
UNREAD = 4  # on test: harmless and task prompts judged only because every row has them (never read)


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
    evidence: dict | None = None  # interp.measures.evidence.Evidence.to_dict(): every term with its interval
    greedy: list[dict] = field(default_factory=list)  # per step: the set kept, its value, every extension's
    sets: list[dict] = field(default_factory=list)  # the set check: layers, gain, matched (seed 0, dev)
    part: str = "dev"  # the parts the ground truth was judged on
    chosen_on_dev: str | None = None  # on test: the candidate the dev study chose

    @property
    def mean_gain(self) -> np.ndarray:
        return np.asarray(self.gain).mean(0)

    @property
    def mean_matched(self) -> np.ndarray:
        return np.asarray(self.matched).mean(0)

    def rhos(self) -> dict[str, float]:
        """Spearman's rho of every candidate with the mean gain (point estimates: no bootstrap)."""
        y = self.mean_gain
        return {name: spearman(np.asarray(values, dtype=float), y) for name, values in self.candidates.items()}

    def rho(self, name: str, target: str = "gain") -> tuple[float, tuple[float, float]]:
        """Spearman's rho of candidate ``name`` with the mean gain (or ``target="matched"``: the mean
        harmful refusal at the base's over-refusal), and its bootstrap interval over blocks."""
        x = np.asarray(self.candidates[name], dtype=float)
        y = self.mean_gain if target == "gain" else self.mean_matched
        return spearman(x, y), bootstrap_interval(spearman, x, y)

    @property
    def chosen(self) -> str:
        """The candidate the protocol file's [ranking] rule picks: the highest dev rho with the gain (NaN
        last; ties: the one listed first). On test, the dev study's choice."""
        if self.chosen_on_dev is not None:
            return self.chosen_on_dev
        rhos = self.rhos()
        return max(rhos, key=lambda name: -math.inf if math.isnan(rhos[name]) else rhos[name])

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
        rhos = self.rhos()
        best = sorted((n for n in rhos if n != "score" and rhos[n] == rhos[n]), key=lambda n: -rhos[n])[:3]
        shown = {f"{name} (rho {rhos[name]:+.2f})": self.candidates[name] for name in ["score", *best]}
        fig = plot_layer_validity(gain.mean(0), sd, shown)  # the layer map's score and the three best candidates
        save_figure(fig, folder / "figures", "layer_validity")
        plt.close(fig)

    @classmethod
    def load(cls, folder: str | Path) -> LayerValidity:
        """The study a ``--layers`` run saved in ``folder`` (``layers.json``)."""
        path = Path(folder) / "layers.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise ConfigError(f"{path} cannot be read as a layers study ({error})") from None


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
    prompts: AnalysisPrompts | None = None,
    unaligned: LoadedModel | None = None,
    sets: bool = True,
) -> LayerValidity:
    """The ground truth and the candidates' validity on ``suite``'s dev parts (module docstring). With
    ``prompts`` (the analysis's), the ``evidence`` candidate; with ``unaligned``, Safe LoRA's cosine; with
    ``sets``, greedy selection and the set check."""
    analysis = bench.analysis
    n = analysis.layer_map.n_layers
    seeds = tuple(seeds or protocol.seeds)
    plans = single_block_plans(n, paper_alignment_layers(n))
    dev = claim_suite(suite, "dev")
    safe = safe_set(dev)
    short = replace(restore, steps=protocol.budgets[0])
    tuning = [plans[n // 4], plans[n // 2], plans[3 * n // 4]]
    tried = [with_lr(p, lr) for lr in protocol.lr_grid for p in tuning]
    rows = bench.judged(tried, replace(short, seed=seeds[0]), dev, label="single blocks: lr on dev")
    base, ft = rows[0], rows[1]
    by_lr = {lr: [r for p, r in zip(tried, rows[2:]) if p.lr == lr] for lr in protocol.lr_grid}
    lr, trials = choose_setting("single block", by_lr, base, ft, safe, protocol.margin)
    bench.log(f"layers: single-block lr on dev {lr:g}")
    gain, matches, over, gradients, ft_rate = _ground_truth(bench, plans, lr, seeds, short, dev, "single blocks")
    terms = score_components(analysis.metrics, analysis.sweep)
    candidates = {
        "score": list(analysis.layer_map.scores),
        **{name: values.tolist() for name, values in terms.items()},
        "patch effect": np.nan_to_num(np.asarray(analysis.sweep.patch_effect, dtype=float)).tolist(),
        "gradient": np.asarray(gradients).mean(0).tolist(),
    }
    found = measure_evidence(bench, prompts) if prompts is not None else None
    if found is not None:
        candidates["evidence"] = found.score.tolist()
    if unaligned is not None:
        cosines = safe_lora_cosines(bench.pair.finetuned, bench.pair.base, unaligned)
        candidates["Safe LoRA cosine"] = (-cosine_layer_map(cosines, n)).tolist()
    result = LayerValidity(lr, trials, list(seeds), gain, matches, over, ft_rate, candidates,
                           None if found is None else found.to_dict())  # fmt: skip
    if sets:
        align = paper_alignment_layers(n)
        result.greedy = greedy_selection(bench, dev, n, align, lr, replace(restore, steps=GREEDY_TRAIN_STEPS, seed=0))
        result.sets = set_check(bench, dev, result, align, replace(short, seed=0))
    return result


def _ground_truth(bench: Bench, plans: list[Plan], lr: float, seeds, short: RestoreConfig, on: EvalSuite,
                  label: str) -> tuple[list, list, list, list, float]:  # fmt: skip
    """Every plan at ``lr`` and each seed, judged on ``on``: per seed and plan the gain, the harmful
    refusal at the base's over-refusal, the over-refusal and the step-0 gradient at the plan's block;
    and the fine-tuned model's harmful refusal."""
    safe, n = safe_set(on), len(plans)
    gain, matches, over, gradients = [], [], [], []
    for seed in seeds:
        rows = bench.judged(
            [with_lr(p, lr) for p in plans], replace(short, seed=seed), on, label=f"{label}, seed {seed}"
        )
        base, ft, mine = rows[0], rows[1], rows[2:]
        gain.append([r.harmful_refusal - ft.harmful_refusal for r in mine])
        matches.append([float(np.mean(matched(base, r, safe))) for r in mine])
        over.append([rate(r, safe) for r in mine])
        gradients.append([(r.info.get("first_gradient") or [math.nan] * n)[layer] for layer, r in enumerate(mine)])
    return gain, matches, over, gradients, ft.harmful_refusal


def layer_validity_on_test(
    bench: Bench,
    suite: EvalSuite,
    dev_study: LayerValidity,
    *,
    protocol: Protocol,
    restore: RestoreConfig = RestoreConfig(),
) -> LayerValidity:
    """The ground truth on ``suite``'s test parts for ``dev_study``'s candidates (module docstring): every
    block at the dev study's lr and seeds, the same trainings, judged on test; no sets."""
    n = len(dev_study.gain[0])
    plans = single_block_plans(n, paper_alignment_layers(n))
    short = replace(restore, steps=protocol.budgets[0])
    test = claim_suite(suite, "test")
    if test.xstest is not None:  # only the sets the ground truth reads; a table row needs a few of the others
        test = EvalSuite(harmful=test.harmful, xstest=test.xstest, harmless=test.harmless.head(UNREAD),
                         task=test.task.head(UNREAD))  # fmt: skip
    gain, matches, over, _, ft_rate = _ground_truth(bench, plans, dev_study.lr, dev_study.seeds, short, test,
                                                    "single blocks on test")  # fmt: skip
    return LayerValidity(
        dev_study.lr, dev_study.lr_trials, list(dev_study.seeds), gain, matches, over, ft_rate, dev_study.candidates,
        dev_study.evidence, part="test", chosen_on_dev=dev_study.chosen,
    )  # fmt: skip


def measure_evidence(bench: Bench, prompts: AnalysisPrompts) -> Evidence:
    """``interp.measures.evidence`` on the pair: its activations at the last prompt token (the analysis's
    capture, from its cache) and a causal sweep kept per prompt on ``EVIDENCE_PROMPTS`` harmful prompts."""
    pair = bench.pair
    acts = capture_pair(pair, prompts, AnalysisConfig(components=False), bench.chat, bench.progress)
    last = PairActivations(**{name: a.tensor.numpy()[:, :, -1] for name, a in acts.items()})
    vectors = (last.base_harmful.mean(0) - last.base_harmless.mean(0)).astype(np.float32)  # [layer, d_model]
    harmful = prompts.harmful.sample(min(EVIDENCE_PROMPTS, len(prompts.harmful)), 0)
    sweep = causal_sweep(pair.base, pair.finetuned, harmful, vectors, bench.analysis.refusal_tokens,
                         chat=bench.chat, progress=bench.progress)  # fmt: skip
    return evidence(sweep, last)


def _set_plan(layers, alignment, lr: float) -> Plan:
    layers = tuple(sorted(layers))
    label = "+".join(map(str, layers))
    return with_lr(Plan(f"set-{label}", f"blocks {label}", layers, tuple(alignment)), lr)


def scored_matched(bench: Bench, plans: list[Plan], config: RestoreConfig, on: EvalSuite, label: str) -> list[float]:
    """Train ``plans``; each one's harmful refusal on ``on`` at the base's judged over-refusal, read from
    refusal scores alone (a prefill per prompt, no generation)."""
    safe = safe_set(on)
    base_rate = rate(bench.judge([], on)[0], safe)
    sets, tokens = on.sets(), bench.analysis.refusal_tokens
    values = []
    for r in bench.train(plans, config, label):
        with torch.no_grad():
            harmful = refusal_scores(r.model, sets["harmful"], tokens, chat=bench.chat).numpy()
            other = refusal_scores(r.model, sets[safe], tokens, chat=bench.chat).numpy()
        values.append(matched_refusal(harmful, other, base_rate)[1])
    return values


def greedy_selection(bench: Bench, dev: EvalSuite, n_layers: int, alignment, lr: float,
                     config: RestoreConfig, steps: int = GREEDY_STEPS) -> list[dict]:  # fmt: skip
    """Forward selection (module docstring): per step, the set kept, its value and every extension's."""
    chosen, trace = [], []
    for step in range(steps):
        extra = [layer for layer in range(n_layers) if layer not in chosen]
        plans = [_set_plan([*chosen, layer], alignment, lr) for layer in extra]
        values = scored_matched(bench, plans, config, dev, label=f"greedy step {step + 1}, {config.steps} steps")
        best = int(np.argmax(values))
        chosen.append(extra[best])
        trace.append({"set": sorted(chosen), "value": values[best], "tried": [[x, v] for x, v in zip(extra, values)]})
        bench.log(
            f"layers: greedy step {step + 1}: {sorted(chosen)} ({100 * values[best]:.1f}% at matched over-refusal)"
        )
    return trace


def set_check(bench: Bench, dev: EvalSuite, result: LayerValidity, alignment, config: RestoreConfig) -> list[dict]:
    """Every pair and triple of the ``SET_CHECK_TOP`` best single blocks, and every candidate's (and
    greedy's) top 2 and top 3, trained at ``config`` and judged on ``dev``: layers, gain, matched."""
    top = np.argsort(-result.mean_gain, kind="stable")[:SET_CHECK_TOP].tolist()
    wanted = {tuple(sorted(c)) for k in (2, 3) for c in itertools.combinations(top, k)}
    wanted |= {tuple(sorted(top_k(values, k))) for values in result.candidates.values() for k in (2, 3)}
    wanted |= {tuple(step["set"]) for step in result.greedy if len(step["set"]) in (2, 3)}
    order = sorted(wanted, key=lambda s: (len(s), s))
    rows = bench.judged([_set_plan(s, alignment, result.lr) for s in order], config, dev, label="set check")
    base, ft, safe = rows[0], rows[1], safe_set(dev)
    return [{"layers": list(s), "gain": r.harmful_refusal - ft.harmful_refusal,
             "matched": float(np.mean(matched(base, r, safe))), "over": rate(r, safe)}
            for s, r in zip(order, rows[2:])]  # fmt: skip


def top_k(values, k: int) -> list[int]:
    """The ``k`` blocks with the highest values (NaN last; ties: the lower block)."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=-np.inf)
    return sorted(np.argsort(-v, kind="stable")[:k].tolist())


def layers_report(result: LayerValidity) -> str:
    """``layers.md``: the candidates' validity, the set check, greedy's steps, then the ground truth and
    the evidence score's terms per block."""
    validity = []
    for name, values in result.candidates.items():
        rho, (low, high) = result.rho(name)
        rho_m, (low_m, high_m) = result.rho(name, "matched")
        validity.append([name, f"{rho:+.2f}", f"[{low:+.2f}, {high:+.2f}]", f"{rho_m:+.2f}",
                         f"[{low_m:+.2f}, {high_m:+.2f}]", str(top_k(values, 3))])  # fmt: skip
    chosen = result.chosen
    gain, matches, over = (np.asarray(x) for x in (result.gain, result.matched, result.over))
    choice = (
        f"By the protocol file's [ranking] rule (the highest dev rho with the gain), the default ranking becomes:"
        f" **{chosen}**."
        if result.part == "dev"
        else f"The ranking chosen on dev: **{chosen}** (rho on test above); the candidates' values are the dev study's."
    )  # fmt: skip
    lines = [
        f"# Which single block restores best ({result.part} parts)",
        "",
        f"LoRA on one block at a time, {len(result.seeds)} seeds (lr {result.lr:g}, chosen on dev); the fine-tuned"
        f" model refuses {100 * result.finetuned:.1f}% of {result.part} harmful prompts. Ground truth's seed-to-seed"
        f" stability (mean Spearman between seeds): {result.stability():.2f}. Best three single blocks:"
        f" {top_k(gain.mean(0), 3)} by gain, {top_k(matches.mean(0), 3)} at the base's over-refusal.",
        "",
        markdown_table(
            [
                "candidate",
                "rho with the gain",
                "95% interval",
                "rho at matched over-refusal",
                "95% interval",
                "its top 3",
            ],
            validity,
        ),  # fmt: skip
        "",
        "Intervals: blocks resampled. " + choice,
        "",
    ]
    lines += _sets_section(result)
    per_layer = [
        [str(layer), f"{100 * gain[:, layer].mean():+.1f}",
         f"{100 * gain[:, layer].std(ddof=1):.1f}" if len(gain) > 1 else "n/a",
         f"{100 * matches[:, layer].mean():.1f}", f"{100 * over[:, layer].mean():.1f}",
         *(f"{result.candidates[name][layer]:.3g}" for name in result.candidates)]
        for layer in range(gain.shape[1])
    ]  # fmt: skip
    lines += [
        "## Per block",
        "",
        markdown_table(
            [
                "block",
                "gain (points)",
                "seed SD",
                "harmful at the base's over-refusal (%)",
                "over-refusal (%)",
                *result.candidates,
            ],
            per_layer,
        ),  # fmt: skip
        "",
    ]
    if result.evidence is not None:
        lines += _evidence_section(result.evidence)
    return "\n".join(lines)


def _set_row(label: str, s: dict) -> list[str]:
    return [label, str(s["layers"]), f"{100 * s['gain']:+.1f}", f"{100 * s['matched']:.1f}", f"{100 * s['over']:.1f}"]


def _sets_section(result: LayerValidity) -> list[str]:
    if not result.sets:
        return []
    by_layers = {tuple(s["layers"]): s for s in result.sets}
    rows = []
    for k in (2, 3):
        for measure in ("gain", "matched"):
            best = max((s for s in result.sets if len(s["layers"]) == k), key=lambda s: s[measure])
            rows.append(_set_row(f"best {k} by {measure}", best))
    for name, values in result.candidates.items():
        rows += [_set_row(f"{name}, top {k}", by_layers[tuple(top_k(values, k))]) for k in (2, 3)]
    rows += [_set_row(f"greedy, {len(s['set'])} steps", by_layers[tuple(s["set"])])
             for s in result.greedy if tuple(s["set"]) in by_layers]  # fmt: skip
    out = [
        "## Sets of 2 and 3 blocks (seed 0, dev, judged)",
        "",
        f"Every pair and triple of the {SET_CHECK_TOP} best single blocks, and each candidate's top 2 and 3, at the"
        f" short budget (lr {result.lr:g}); {len(result.sets)} sets. One seed: read differences under about"
        " 5 points as noise (the seed SD of single blocks above).",
        "",
        markdown_table(
            ["set", "blocks", "gain (points)", "harmful at the base's over-refusal (%)", "over-refusal (%)"], rows
        ),  # fmt: skip
        "",
    ]
    if result.greedy:
        steps = [[str(i + 1), str(s["set"]), f"{100 * s['value']:.1f}"] for i, s in enumerate(result.greedy)]
        out += [f"Greedy forward selection ({GREEDY_TRAIN_STEPS} steps per try, refusal scores at the base's"
                " over-refusal):", "", markdown_table(["step", "set kept", "value (%)"], steps), ""]  # fmt: skip
    return out


def _evidence_section(found: dict) -> list[str]:
    terms = [found[name] for name in ("causal", "suppression", "amplification")]
    rows = [
        [str(layer), *(f"{t['value'][layer]:+.3g} [{t['low'][layer]:+.3g}, {t['high'][layer]:+.3g}]" for t in terms),
         f"{found['score'][layer]:+.3g}"]
        for layer in range(len(found["score"]))
    ]  # fmt: skip
    return [
        f"## The evidence score's terms ({found['n_causal_prompts']} causal prompts; 95% intervals over prompts)",
        "",
        markdown_table(["block", *(f"{t['name']} ({t['unit']})" for t in terms), "evidence (log-odds)"], rows),
        "",
    ]
