"""The protocol's result (``ProtocolResult``: saved as ``protocol.json`` and read back) and its report
(``protocol.md`` with the figures ``strength_sweep`` and ``training_curves``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..errors import ConfigError
from ..evaluation.suite import EvalRow
from ..io.atomic import atomic_write_json, atomic_write_text
from ..report.figures import save_figure
from ..report.plots import plot_restore_history, plot_strength_sweep
from ..report.study_tables import results_table
from ..report.tables import markdown_table
from .claims import Claim, PlanSummary, broken, plan_summary


@dataclass
class ProtocolResult:
    lrs: dict[str, float]  # family -> chosen lr
    lr_trials: list[dict]  # every (family, lr) on dev
    rows: dict[int, list[EvalRow]]  # seed -> the test rows (base and fine-tuned first)
    sweep: dict[str, list[dict]]  # plan -> [{step, harmful, safe}] on test
    claims: list[Claim]
    seconds: dict[str, float]
    histories: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # run -> plan -> loss per step
    safe: str = "xstest"  # the set whose refusal is over-refusal
    peers: list[dict] = field(default_factory=list)  # per published method: its dev-chosen setting and cost
    peer_trials: list[dict] = field(default_factory=list)  # every method's settings on dev
    full_table: list[EvalRow] = field(default_factory=list)  # the named plans at the first seed, every test set
    ranking: dict | None = None  # {"name", "selected"}: the ranking the plans came from (None: older runs, the score)
    missing_seeds: list[int] = field(default_factory=list)  # not run yet: a partial result (``run_protocol``)

    def save(self, folder: str | Path) -> list[Path]:
        """``protocol.json`` (everything but the answers), ``protocol.md`` and the figures, into ``folder``;
        returns the paths written."""
        folder = Path(folder)
        rows = {seed: [row.saved() for row in rows] for seed, rows in self.rows.items()}
        paths = [
            atomic_write_json(folder / "protocol.json", self._saved(rows)),
            atomic_write_text(folder / "protocol.md", protocol_report(self)),
        ]
        if self.sweep:
            draws = [name for name in self.sweep if name.startswith("random-")]
            fig = plot_strength_sweep(self.sweep, draws)
            paths += save_figure(fig, folder / "figures", "strength_sweep")
            plt.close(fig)
        for run, histories in self.histories.items():
            fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
            named = {n: h for n, h in histories.items() if not n.startswith("random-")}
            plot_restore_history(named, ax=ax, draws={n: h for n, h in histories.items() if n not in named})
            ax.set_title(f"Restoration losses, {run}")
            paths += save_figure(fig, folder / "figures", "training_curves_" + run.replace(" ", "_").replace(",", ""))
            plt.close(fig)
        return paths

    def _saved(self, rows: dict) -> dict:
        return {"lrs": self.lrs, "lr_trials": self.lr_trials, "rows": rows, "sweep": self.sweep, "safe": self.safe} | {
            "claims": [asdict(c) for c in self.claims],
            "seconds": self.seconds,
            "histories": self.histories,
            "peers": self.peers,
            "peer_trials": self.peer_trials,
            "full_table": [row.saved() for row in self.full_table],
            "ranking": self.ranking,
            "missing_seeds": self.missing_seeds,
        }

    @classmethod
    def load(cls, folder: str | Path) -> ProtocolResult:
        """The result a protocol run saved in ``folder`` (``protocol.json``)."""
        path = Path(folder) / "protocol.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path} cannot be read as a protocol result ({error})") from None
        return cls(
            data["lrs"],
            data["lr_trials"],
            {int(seed): [EvalRow.from_saved(row) for row in rows] for seed, rows in data["rows"].items()},
            data["sweep"],
            [Claim(**c | {"interval": c["interval"] and tuple(c["interval"])}) for c in data["claims"]],
            data["seconds"],
            data.get("histories", {}),
            data.get("safe", "xstest"),
            data.get("peers", []),
            data.get("peer_trials", []),
            [EvalRow.from_saved(row) for row in data.get("full_table", [])],
            data.get("ranking"),
            data.get("missing_seeds", []),
        )


def _with_interval(summary: PlanSummary, measure: str) -> str:
    """The seed-mean rate in %, with its 95% interval over prompts where the summary has one."""
    low_high = summary.intervals.get(measure)
    interval = "" if low_high is None else f" [{_pct(low_high[0])}, {_pct(low_high[1])}]"
    return _pct(summary.mean(measure)) + interval


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def _summary_table(summaries: list[PlanSummary], seeds: list[int]) -> list[str]:
    """Per plan: harmful refusal per seed, its mean and seed-to-seed SD, the other claim sets, harmful
    refusal at the base's over-refusal, and the AUROC (``interp.protocol.claims`` module docstring)."""
    cells = []
    for s in summaries:
        if (
            s.family in ("base", "finetuned", "released")
            or s.family.startswith("peer:")
            or len(s.per_seed["harmful"]) == 1
        ):
            per_seed = [_pct(s.per_seed["harmful"][0])] + [""] * (len(seeds) - 1)
            sd = {"released": "trained once", "base": "(no training)", "finetuned": "(no training)"}.get(
                s.family, "(no training)" if s.family.startswith("peer:") else "one seed"
            )
        elif s.family == "draws":  # [seed, draw]: each draw's seed-to-seed SD, then their median
            grid = np.asarray(s.per_seed["harmful"]).reshape(len(seeds), -1)
            per_seed = [f"{_pct(row.mean())} ({_pct(row.min())}-{_pct(row.max())})" for row in grid]
            sd = (
                f"{100 * float(np.median(grid.std(0, ddof=1))):.1f} (median of the draws')"
                if len(seeds) > 1
                else "one seed"
            )
        else:
            per_seed = [_pct(v) for v in s.per_seed["harmful"]]
            sd = f"{100 * s.sd('harmful'):.1f}"
        auroc = f"{s.mean('auroc'):.3f}" + (
            "" if s.auroc_interval is None else f" [{s.auroc_interval[0]:.3f}, {s.auroc_interval[1]:.3f}]"
        )
        cells.append([
            s.name, *per_seed, _with_interval(s, "harmful"), sd, _pct(s.mean("xstest_unsafe")), _pct(s.mean("safe")),
            _with_interval(s, "matched"), auroc,
        ])  # fmt: skip
    head = [
        "plan", *(f"harmful, seed {s}" for s in seeds), "harmful, mean", "seed-to-seed SD (points)",
        "XSTest unsafe", "over-refusal (XSTest safe)", "harmful at the base's over-refusal", "AUROC harmful vs safe",
    ]  # fmt: skip
    return [
        "Every plan on the test part (refusal in %, judged; the draws: mean over draws per seed, with their range):",
        "",
        markdown_table(head, cells),
        "",
    ]


def _broken_note(rows: dict[int, list[EvalRow]]) -> list[str]:
    """Names the broken models (``interp.protocol.claims.broken``) per seed; nothing when there are none."""
    found = [f"seed {seed}: {', '.join(r.name for r in rows[seed] if broken(r))}"
             for seed in sorted(rows) if any(broken(r) for r in rows[seed])]  # fmt: skip
    if not found:
        return []
    return [
        f"Broken models (most harmful answers degenerate: they refuse nothing and solve nothing): {'; '.join(found)}."
        " They stay in every comparison, as the protocol fixes each family's lr; a broken draw lowers the draws'"
        " mean and so flatters the ranked plan.",
        "",
    ]


COST_OF = {"ranked": "SafeReAct LoRA, ranked layers", "all_layers": "SafeReAct LoRA, every layer",
           "released": "released SafeReAct recipe", "distill": "Self-distillation"}  # fmt: skip


def methods_table(result: ProtocolResult, cost: dict[str, dict]) -> str:
    """Every method of a protocol run on test beside its cost: per plan (seed means; the draws: their mean
    and range), harmful refusal, over-refusal, harmful refusal at the base's over-refusal and task accuracy,
    each with its 95% interval over prompts (``plan_summary``), then seconds to make, trainable parameters,
    peak memory added and what it needs from ``cost`` (method name -> ``benchmarks/method_cost.py``'s
    measures; the family's entry of ``COST_OF``, a published method's own name)."""
    cells = []
    for s in plan_summary(result.rows, result.safe):
        if s.family == "draws":  # each measure's mean, and the range of the draws' seed means
            name = f"{s.name} (mean; range of the draws' seed means)"
            rates = []
            for m in ("harmful", "safe", "matched", "task"):
                per_draw = np.asarray(s.per_seed[m]).reshape(len(result.rows), -1).mean(0)
                rates.append(f"{_pct(s.mean(m))} ({_pct(per_draw.min())}-{_pct(per_draw.max())})")
        else:
            name = s.name
            rates = [_with_interval(s, m) for m in ("harmful", "safe", "matched", "task")]
        made = cost.get(COST_OF.get(s.family, s.family.removeprefix("peer:")))
        price = ["", "", "", ""] if made is None else [
            f"{made['seconds']:.0f}", f"{made['trainable']:,}", f"{made['peak_mib']:,.0f}", made["needs"]]  # fmt: skip
        cells.append([name, *rates, *price])
    head = ["method", "harmful refusal", "over-refusal (XSTest safe)", "harmful at the base's over-refusal",
            "task accuracy", "seconds to make", "trainable params", "peak memory added (MiB)", "needs"]  # fmt: skip
    return markdown_table(head, cells)


def protocol_report(result: ProtocolResult) -> str:
    """``protocol.md``: the claim table, the lr chosen per family, every plan on test, the sweep's readings."""
    cells = [
        [c.name, c.what, f"{100 * c.estimate:+.1f}",
         "" if c.interval is None else f"[{100 * c.interval[0]:+.1f}, {100 * c.interval[1]:+.1f}]",
         "" if c.p_value is None else f"{c.p_value:.3g}", "" if c.holm_p is None else f"{c.holm_p:.3g}",
         c.verdict, ", ".join(f"seed {s}: {r}" for s, r in c.detail.get("ranks", {}).items())]
        for c in result.claims
    ]  # fmt: skip
    head = ["claim", "what", "estimate (points)", "95% interval", "p", "Holm p", "verdict", "rank among draws"]
    trials = [
        [t["family"], f"{t['lr']:g}", f"{t['harmful']:.1%}", f"{t['safe']:.1%}", f"{t['task']:.1%}",
         "yes" if t["ok"] else "no"]
        for t in result.lr_trials
    ]  # fmt: skip
    family = next((c.detail.get("holm_family") for c in result.claims if c.detail.get("holm_family")), None)
    note = [] if not family else [
        f"Holm over {', '.join(family)}" + ("" if "H4" in family else " (H4 not run: it needs --released)")
        + "; H2 is supported only if H2a is and the strength sweep (H2b) agrees in sign.",
        "",
    ]  # fmt: skip
    ranking = [] if result.ranking is None else [
        f"Ranking: **{result.ranking['name']}**, top {len(result.ranking['selected'])}"
        f" {result.ranking['selected']}; the ranked plan, bottom-k and the depth-range draws follow it.",
        "",
    ]  # fmt: skip
    partial = [] if not result.missing_seeds else [
        f"**Partial: seed{'s' if len(result.missing_seeds) > 1 else ''} {', '.join(map(str, result.missing_seeds))}"
        " not run yet** (`interp protocol --seeds`"
        f" into this folder). The claims below read the seeds run so far ({', '.join(map(str, sorted(result.rows)))});"
        " the"
        " strength sweep (H2b), the released recipe (H4), the full table and the published methods run once"
        " every seed is in.",
        "",
    ]  # fmt: skip
    lines = [
        "# The pre-registered test (interp/data/protocol.toml)",
        "",
        *partial,
        *ranking,
        markdown_table(head, cells) if cells else "Not run on test yet (--dev-only): the learning rates only.",
        "",
        *note,
        "Learning rate per family, chosen on dev: " + ", ".join(f"{f} {lr:g}" for f, lr in result.lrs.items()) + ".",
        "",
        markdown_table(
            ["family", "lr", "dev harmful refusal", "dev over-refusal", "dev task", "within the bounds"], trials
        ),  # fmt: skip
        "",
    ]
    if result.rows:
        lines += _summary_table(plan_summary(result.rows, result.safe), sorted(result.rows))
        lines += _broken_note(result.rows)
    if result.full_table:
        lines += [
            "The named plans at the first seed on every test set (amendment 1's full table; Wilson 95% intervals):",
            "",
            results_table(result.full_table),
            "",
        ]
    if result.peers:
        chosen = [[p["method"], p["setting"], f"{p['seconds']:.0f}", f"{p.get('trainable', 0):,}",
                   p["needs"]] for p in result.peers]  # fmt: skip
        tried = [[t["family"], str(t["setting"]), f"{t['harmful']:.1%}", f"{t['safe']:.1%}", f"{t['task']:.1%}",
                  "yes" if t["ok"] else "no"] for t in result.peer_trials]  # fmt: skip
        lines += [
            "Published methods (`interp.protocol.peers`): the setting chosen on dev by the same rule, and the cost"
            " (memory, each method in a fresh process: `benchmarks/method_cost.py`):",
            "",
            markdown_table(["method", "setting", "seconds to make", "trainable params", "needs"], chosen),  # fmt: skip
            "",
            markdown_table(
                ["method", "setting", "dev harmful refusal", "dev over-refusal", "dev task", "within the bounds"], tried
            ),  # fmt: skip
            "",
        ]
    at = next((c.detail.get("at") for c in result.claims if c.name == "H2b"), None)
    if at:
        readings = [[name, _pct(value)] for name, value in at.items()]
        lines += [
            "Strength sweep (seed 0, checkpoints of the long run): harmful refusal at the base's over-refusal, "
            "interpolated along each plan's curve (n/a: the curve does not reach it):",
            "",
            markdown_table(["plan", "harmful refusal at the base's over-refusal (%)"], readings),
            "",
        ]
    lines += ["Time per stage: " + ", ".join(f"{stage} {s:.0f} s" for stage, s in result.seconds.items()) + ".", ""]
    return "\n".join(lines)
