"""The published restoration methods as rows of the protocol: each method's setting chosen on dev by the
file's rule (``choose_setting``), then judged on the test parts beside the plans, with its cost.

The methods are ``interp.training.peers``, ``interp.training.safe_lora`` and ``interp.training.antidote``
(formulas there), on the pair's three checkpoints: the ``unaligned`` source, the ``aligned`` base and the
``finetuned`` model. The weight arithmetic runs on float32 copies of the three (a bfloat16 alignment delta
is mostly rounding), and each result is cast to the pair's dtype before it is judged. The settings tried on
dev (``SETTINGS``):

* interpolation toward the base, ``t`` in 0.25, 0.5, 0.75 (the floor: safety bought with task ability);
* RESTA, ``beta`` in 0.5, 1, 2; and RESTA with DARE (drop rate 0.5 on the task update) at the same ``beta``s;
* Safe LoRA with the released projection and with the exact projector, each selecting the release's
  default 10 lowest-cosine modules or every module at cosine <= 0.5 (the release's threshold);
* Antidote, the top 1%, 5% or 10% of weights per output row by Wanda score on the restoration's harmful
  prompts (their inputs through the fine-tuned model) set to zero; and Antidote on the task update alone
  (scores ``|W_ft - W_aligned| n_j``, the top 5%, 10%, 20% or 40% per row returned to the aligned weights),
  the analogue of the release pruning only its adapter (amendment 6).

**Self-distillation** (``interp.training.self_distill``), the output-space peer of restoration: LoRA SFT on
the base's answers to the restoration's harmful prompts (and the fine-tuned model's own answers to as many
retain prompts) at the ranked plan's layers, with restoration's rank, steps and batch; its lr chosen on dev
(seed 0) from ``DISTILL_LRS`` by the same rule, then trained at every seed and judged on the test parts like
the plans (one row per seed, not in the claims' Holm family).

Cost per method: the seconds to make the model (Antidote includes its calibration pass; self-distillation
its teacher's answers and training), trainable parameters (none for the weight-space methods) and what it
needs (``NEEDS``). Memory is measured apart, each method in a fresh process (``benchmarks/method_cost.py``):
inside a long run, what earlier stages hold and free hides what a method needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from ..core.chat import ChatFormat
from ..core.models import LoadedModel, ModelPair, load_model
from ..core.prompts import PromptSet
from ..errors import ConfigError
from ..evaluation.suite import Candidate, EvalRow, EvalSuite
from ..training.antidote import antidote
from ..training.peers import interpolate, resta
from ..training.restore_config import RestoreConfig
from ..training.safe_lora import safe_lora
from ..training.self_distill import self_distill
from .bench import Bench, choose_setting, safe_set

SETTINGS: dict[str, tuple] = {
    "interpolation": (0.25, 0.5, 0.75),
    "RESTA": (0.5, 1.0, 2.0),
    "RESTA + DARE": (0.5, 1.0, 2.0),
    "Safe LoRA (released)": ("10 modules", "cos <= 0.5"),
    "Safe LoRA (exact projector)": ("10 modules", "cos <= 0.5"),
    "Antidote": (0.01, 0.05, 0.1),
    "Antidote (task update)": (0.05, 0.1, 0.2, 0.4),
}
USES_UNALIGNED = ("RESTA", "RESTA + DARE", "Safe LoRA (released)", "Safe LoRA (exact projector)")
NEEDS = {
    "interpolation": "aligned and fine-tuned weights",
    "RESTA": "unaligned, aligned and fine-tuned weights",
    "RESTA + DARE": "unaligned, aligned and fine-tuned weights",
    "Safe LoRA (released)": "unaligned, aligned and fine-tuned weights",
    "Safe LoRA (exact projector)": "unaligned, aligned and fine-tuned weights",
    "Antidote": "fine-tuned weights and harmful prompts",
    "Antidote (task update)": "aligned and fine-tuned weights and harmful prompts",
    "Self-distillation": "aligned and fine-tuned models, harmful and retain prompts, their answers",
}
DISTILL_LRS = (3e-4, 1e-3, 3e-3, 1e-2)


@dataclass
class PeerRow:
    """One method at its dev-chosen setting: its test rows are in the protocol's rows (plan ``peer:...``)."""

    method: str
    setting: str
    seconds: float  # to make the model
    needs: str
    trainable: int = 0  # parameters trained (0: weight arithmetic only)


def float32_copy(model: LoadedModel) -> LoadedModel:
    """``model`` itself if float32, else a float32 copy loaded from its checkpoint (the weight arithmetic's
    operands: a bfloat16 alignment delta is mostly rounding)."""
    return model if next(model.hf.parameters()).dtype == torch.float32 else load_model(model.path, dtype="float32")


def peer_candidates(
    pair: ModelPair, unaligned: LoadedModel, bench: Bench, method: str, settings=None
) -> list[Candidate]:
    """The method at every setting (or ``settings``), as candidates in the pair's dtype."""
    if method not in SETTINGS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(SETTINGS)}")
    ft, al, un = float32_copy(pair.finetuned), float32_copy(pair.base), float32_copy(unaligned)
    dtype = next(pair.finetuned.hf.parameters()).dtype
    out = []
    for setting in settings or SETTINGS[method]:
        start = time.perf_counter()
        model = make_peer(method, setting, ft, al, un, bench.harmful, bench.chat)
        seconds = time.perf_counter() - start
        label = f"{method} ({setting:g})" if isinstance(setting, float) else f"{method} ({setting})"
        model = model.with_hf(model.hf.to(dtype), name=label)
        key = f"peer:{method}@{setting}"
        info = {"setting": str(setting)}
        out.append(Candidate(label, model, train_seconds=seconds, plan=key, info=info))
    return out


def make_peer(
    method: str, setting, ft: LoadedModel, al: LoadedModel, un: LoadedModel | None, harmful: PromptSet,
    chat: ChatFormat = ChatFormat(),
) -> LoadedModel:  # fmt: skip
    """``method`` at ``setting`` on the float32 fine-tuned, aligned and unaligned models (``un`` is read only
    by ``USES_UNALIGNED``); Antidote scores its weights on ``harmful``."""
    if method == "interpolation":
        return interpolate(ft, al, setting)
    if method.startswith("RESTA"):
        return resta(ft, al, un, setting, dare=0.5 if "DARE" in method else None)
    if method.startswith("Safe LoRA"):
        projection = "released" if "released" in method else "exact"
        select = {"select": "number", "n_modules": 10} if setting == "10 modules" else {"select": "threshold"}
        return safe_lora(ft, al, un, projection=projection, threshold=0.5, **select).model
    return antidote(ft, harmful, setting, aligned=al if "task update" in method else None, chat=chat)


def peer_rows(
    pair: ModelPair, unaligned: LoadedModel, bench: Bench, dev: EvalSuite, test: EvalSuite, margin: float,
    methods: tuple[str, ...] = tuple(SETTINGS),
) -> tuple[list[PeerRow], list[dict], list[EvalRow]]:  # fmt: skip
    """Every method's (of ``methods``) settings judged on ``dev``, its setting chosen by the file's rule, then
    judged on ``test``: the chosen settings, every dev trial, and the test rows (one per method, in order)."""
    chosen, trials, picked = [], [], []
    safe = safe_set(dev)
    for method in methods:
        candidates = peer_candidates(pair, unaligned, bench, method)
        rows = bench.judge(candidates, dev)
        base, ft = rows[0], rows[1]
        by_setting = {c.info["setting"]: [row] for c, row in zip(candidates, rows[2:])}
        setting, tried = choose_setting(method, by_setting, base, ft, safe, margin, key="setting")
        trials += tried
        candidate = next(c for c in candidates if c.info["setting"] == setting)
        chosen.append(PeerRow(method, setting, round(candidate.train_seconds, 1), NEEDS[method]))
        picked.append(candidate)
    return chosen, trials, bench.judge(picked, test)[2:]


def distill_rows(
    bench: Bench, layers: list[int], dev: EvalSuite, test: EvalSuite, seeds, restore: RestoreConfig, margin: float
) -> tuple[PeerRow, list[dict], dict[int, EvalRow]]:
    """Self-distillation at ``layers`` (module docstring): every lr of ``DISTILL_LRS`` at seed 0 judged on
    ``dev``, the lr chosen by the file's rule, then every seed at that lr judged on ``test``. Returns its cost
    row (mean over the seeds), the dev trials and each seed's test row."""
    name = f"self-distillation {sorted(layers)}"

    def made(seed: int, lr: float) -> Candidate:
        d = self_distill(bench.pair, bench.harmful, bench.retain, layers, replace(restore, seed=seed), lr=lr,
                         chat=bench.chat, cache=bench.cache, progress=bench.progress)  # fmt: skip
        info = {"setting": f"lr {lr:g}", "trainable": d.trainable_params}
        return Candidate(f"{name} lr {lr:g}", d.model, train_seconds=d.seconds, plan=f"distill@{lr:g}", info=info)

    tried = [made(0, lr) for lr in DISTILL_LRS]
    rows = bench.judge(tried, dev)
    by_lr = {c.info["setting"]: [row] for c, row in zip(tried, rows[2:])}
    setting, trials = choose_setting("Self-distillation", by_lr, rows[0], rows[1], safe_set(dev), margin, "setting")
    lr = DISTILL_LRS[list(by_lr).index(setting)]
    del tried, rows
    chosen = [made(seed, lr) for seed in seeds]
    judged = bench.judge(chosen, test)[2:]
    cost = PeerRow(
        "Self-distillation", setting, round(sum(c.train_seconds for c in chosen) / len(chosen), 1),
        NEEDS["Self-distillation"], trainable=chosen[0].info["trainable"],
    )  # fmt: skip
    return cost, trials, dict(zip(seeds, judged))
