"""What the protocol's stages share: a ``Bench`` that trains plans and judges models against the base and
the fine-tuned model, the claim sets' parts, and the file's rule for choosing a setting on dev.

A stage's judged rows can be kept in its output folder (``Bench.kept``: ``NAME.json``, with the key of
everything they depend on), so a study longer than one sitting runs a part per sitting and its result
travels with the folder, no cache needed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.chat import ChatFormat
from ..core.models import ModelPair
from ..core.prompts import PromptSet
from ..errors import ConfigError
from ..evaluation.suite import Candidate, EvalConfig, EvalRow, EvalSuite
from ..evaluation.table import evaluate_models
from ..io.atomic import atomic_write_json
from ..io.hashing import stable_hash
from ..measures.result import AnalysisResult
from ..study_plans import Plan
from ..study_training import Restored, train_plans
from ..training.restore_config import RestoreConfig
from .claims import rate
from .design import Protocol


def with_lr(plan: Plan, lr: float) -> Plan:
    """``plan`` at its own learning rate ``lr`` (its key and name say which)."""
    return replace(plan, lr=lr, key=f"{plan.key}@{lr:g}", name=f"{plan.name} lr {lr:g}")


def safe_set(suite: EvalSuite) -> str:
    """The set whose refusal is over-refusal: XSTest safe where the suite has it, else harmless."""
    return "xstest" if suite.xstest is not None else "harmless"


def claim_suite(suite: EvalSuite, part: str) -> EvalSuite:
    """The sets the claims read, ``part`` of each (harmful, XSTest unsafe and safe where present, and the
    harmless and task sets every row needs)."""
    keep = {"harmful", "xstest_unsafe", "xstest", "harmless", "task"}
    return EvalSuite(**{name: p.part(part) for name, p in suite.sets().items() if name in keep})


@dataclass
class Bench:
    """What every train-and-judge step of the protocol shares: the pair and its analysis, the training
    prompts, the settings; ``histories`` collects every run's losses (run -> plan -> loss per step)."""

    pair: ModelPair
    analysis: AnalysisResult
    harmful: PromptSet
    retain: PromptSet
    evaluation: EvalConfig = EvalConfig()
    chat: ChatFormat = ChatFormat()
    cache: bool = True
    progress: bool = True
    log: Callable[[str], None] = print
    histories: dict[str, dict[str, list[dict]]] = field(default_factory=dict)

    def judged(self, plans: list[Plan], config: RestoreConfig, on: EvalSuite, label: str = "") -> list[EvalRow]:
        """Train ``plans`` (cached, in lockstep) and judge them on ``on`` (``judge``), at most
        ``lockstep_group`` plans at a time (each holds copies of the model until it is judged); each plan's
        row holds its step-0 LoRA gradient per block in ``info["first_gradient"]``. The rows: the base, the
        fine-tuned model, then ``plans`` in order."""
        size = lockstep_group(self.pair)
        rows: list[EvalRow] = []
        for start in range(0, len(plans), size):
            restored = self.train(plans[start : start + size], config, label)
            judged = self.judge([r.candidate() for r in restored], on)
            for row, r in zip(judged[2:], restored):
                row.info["first_gradient"] = r.stats.first_gradient
            rows = judged if not rows else rows + judged[2:]
            del restored, judged  # this group's models, before the next group's are made
        return rows

    def kept(
        self, plans: list[Plan], config: RestoreConfig, on: EvalSuite, name: str, *, earlier: str | Path | None = None,
        folder: str | Path | None = None, run: bool = True, label: str = "",
    ) -> list[EvalRow] | None:  # fmt: skip
        """``judged``, with the rows kept in a file: read from ``earlier``/``NAME.json`` where a former run saved
        them under the same key (``rows_key``), else judged now if ``run``, else ``None``; then written with
        the plans' losses to ``folder``/``NAME.json``. A file made under another key is one error."""
        key = rows_key(self, plans, config, on)
        run_label = label or f"{config.steps} steps, seed {config.seed}"
        found = load_rows(earlier, name, key) if earlier else None
        if found is not None:
            rows, histories = found
            self.histories.setdefault(run_label, {}).update(histories)
        elif run:
            rows = self.judged(plans, config, on, label)
        else:
            return None
        if folder:
            losses = self.histories.get(run_label, {})
            save_rows(folder, name, key, rows, {p.name: losses[p.name] for p in plans if p.name in losses})
        return rows

    def check_kept(self, units: list[tuple[list[Plan], RestoreConfig, EvalSuite, str]], earlier) -> None:
        """Every ``(plans, config, on, name)`` whose file ``earlier`` holds was made under its key: checked
        before any training, so a wrong folder is one error, not one after hours (``kept``)."""
        for plans, config, on, name in units if earlier else ():
            load_rows(earlier, name, rows_key(self, plans, config, on))

    def train(self, plans: list[Plan], config: RestoreConfig, label: str = "") -> list[Restored]:
        """Train ``plans`` (cached, in lockstep); their losses go to ``histories[label]``."""
        restored = train_plans(plans, self.pair, self.analysis.layer_map, self.harmful, self.retain, config,
                               chat=self.chat, cache=self.cache, progress=self.progress)  # fmt: skip
        run = label or f"{config.steps} steps, seed {config.seed}"
        self.histories.setdefault(run, {}).update({r.plan.name: r.stats.history for r in restored})
        return restored

    def judge(self, candidates: list[Candidate], on: EvalSuite) -> list[EvalRow]:
        """The rows of the base, the fine-tuned model, then every candidate, judged on ``on``."""
        reference = [
            Candidate("base", self.pair.base, plan="base"),
            Candidate("finetuned", self.pair.finetuned, plan="finetuned"),
        ]
        return evaluate_models(
            reference + list(candidates), on, refusal_tokens=self.analysis.refusal_tokens,
            reference=self.pair.finetuned, config=self.evaluation, chat=self.chat, cache=self.cache,
            progress=self.progress, log=self.log,
        )  # fmt: skip


def rows_key(bench: Bench, plans: list[Plan], config: RestoreConfig, on: EvalSuite) -> str:
    """What judged rows depend on: both models, the chat format, the training prompts, the plans (where
    each puts LoRA and aligns, at which lr), the training settings (seed included), the evaluation settings
    and the prompts judged."""
    return stable_hash([
        bench.pair.base.fingerprint, bench.pair.finetuned.fingerprint, repr(bench.chat), bench.harmful.hash,
        bench.retain.hash, [(p.key, p.layers, p.alignment, p.modules) for p in plans], config.key(),
        bench.evaluation.key(), on.hash,
    ])  # fmt: skip


def rows_file(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def save_rows(folder: str | Path, name: str, key: str, rows: list[EvalRow], histories: dict) -> Path:
    """``rows`` (and the plans' losses) as ``folder``/``NAME.json`` under ``key`` (``load_rows``)."""
    data = {"key": key, "rows": [r.saved() for r in rows], "histories": histories}
    return atomic_write_json(rows_file(folder, name), data)


def load_rows(folder: str | Path, name: str, key: str) -> tuple[list[EvalRow], dict] | None:
    """The rows and losses a run saved as ``folder``/``NAME.json`` (``None`` if it has none); one error if
    they were made under another key."""
    path = rows_file(folder, name)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != key:
        raise ConfigError(f"{path} was made with other plans, settings, models or prompts: choose another --out")
    return [EvalRow.from_saved(row) for row in data["rows"]], data.get("histories", {})


LOCKSTEP_MAX = 24  # plans trained together at most: more adds no speed (each student's step is its own)


def lockstep_group(pair: ModelPair, available: int | None = None) -> int:
    """How many plans ``Bench.judged`` trains and judges at once: each holds about two copies of the
    fine-tuned model's weights (its student while training, then its merged model until judged), and
    together they may take half the memory ``available`` now (bytes; default: the system's, ``MemAvailable``);
    at least 1, at most ``LOCKSTEP_MAX``. (88 copies of SmolLM2-135M in bf16 fill 24 GiB.)"""
    weights = sum(p.numel() * p.element_size() for p in pair.finetuned.hf.parameters())
    if available is None:
        available = _available_memory()
    return max(1, min(LOCKSTEP_MAX, int(available / 2 / (2 * weights))))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import psutil

        return int(psutil.virtual_memory().available)


def choose_setting(family: str, rows: dict, base: EvalRow, ft: EvalRow, safe: str, margin: float,
                   key: str = "lr") -> tuple:  # fmt: skip
    """The file's rule: ``rows[setting]`` are a family's dev rows at that setting (an lr, a method's knob);
    the setting with the highest mean harmful refusal among those whose over-refusal is at most the base's
    + ``margin`` and whose task accuracy is at least the fine-tuned model's - ``margin``. If none qualifies:
    the lowest over-refusal among the settings that keep the task (amendment 10: a collapsed model refuses
    nothing, so over-refusal alone would choose it), or among all if none keeps it. Returns it and a trial
    record per setting (the setting under ``key``)."""
    scored, trials = [], []
    for i, (setting, mine) in enumerate(rows.items()):
        harmful_rate = float(np.mean([r.harmful_refusal for r in mine]))
        over = float(np.mean([rate(r, safe) for r in mine]))
        task = float(np.mean([r.task_accuracy for r in mine]))
        keeps_task = task >= ft.task_accuracy - margin
        ok = over <= rate(base, safe) + margin and keeps_task
        scored.append((ok, harmful_rate, -over, -i, setting, keeps_task))  # ties: the setting listed first
        trials.append({"family": family, key: setting, "harmful": harmful_rate, "safe": over, "task": task, "ok": ok})
    qualified = [s for s in scored if s[0]]
    if qualified:
        return max(qualified)[4], trials
    fallback = [s for s in scored if s[5]] or scored
    return max(fallback, key=lambda s: (s[2], s[3]))[4], trials


LR_GRID = "protocol_lr_grid"  # the dev grid's kept rows


def choose_lrs(
    bench: Bench, families: dict[str, list[Plan]], protocol: Protocol, restore: RestoreConfig, dev: EvalSuite,
    earlier: str | Path | None = None, folder: str | Path | None = None,
) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """Every family at every lr of the grid, seed 0, the short budget, in lockstep, judged on ``dev`` (the
    rows kept as ``LR_GRID`` in ``folder``, and read from ``earlier`` if a former run has them); each
    family's lr by ``choose_setting``."""
    tried = {family: [with_lr(p, lr) for lr in protocol.lr_grid for p in plans] for family, plans in families.items()}
    order = [p for plans in tried.values() for p in plans]
    short = protocol.budgets[0]
    rows = bench.kept(order, replace(restore, steps=short, seed=0), dev, LR_GRID, earlier=earlier, folder=folder,
                      label=f"lr grid on dev, {short} steps")  # fmt: skip
    base, ft, by_key = rows[0], rows[1], dict(zip([p.key for p in order], rows[2:]))
    lrs, trials = {}, []
    for family, plans in tried.items():
        by_lr = {lr: [by_key[p.key] for p in plans if p.lr == lr] for lr in protocol.lr_grid}
        lrs[family], tried_here = choose_setting(family, by_lr, base, ft, safe_set(dev), protocol.margin)
        trials += tried_here
    return lrs, trials
