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

Cost per method: the seconds to make the model (no training; Antidote includes its calibration pass),
trainable parameters (none), and what it needs (``NEEDS``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..core.models import LoadedModel, ModelPair, load_model
from ..errors import ConfigError
from ..evaluation.suite import Candidate, EvalRow, EvalSuite
from ..training.antidote import antidote
from ..training.peers import interpolate, resta
from ..training.safe_lora import safe_lora
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
NEEDS = {
    "interpolation": "aligned and fine-tuned weights",
    "RESTA": "unaligned, aligned and fine-tuned weights",
    "RESTA + DARE": "unaligned, aligned and fine-tuned weights",
    "Safe LoRA (released)": "unaligned, aligned and fine-tuned weights",
    "Safe LoRA (exact projector)": "unaligned, aligned and fine-tuned weights",
    "Antidote": "fine-tuned weights and harmful prompts",
    "Antidote (task update)": "aligned and fine-tuned weights and harmful prompts",
}


@dataclass
class PeerRow:
    """One method at its dev-chosen setting: its test rows are in the protocol's rows (plan ``peer:...``)."""

    method: str
    setting: str
    seconds: float  # to make the model (no training)
    needs: str


def _float32(model: LoadedModel) -> LoadedModel:
    return model if next(model.hf.parameters()).dtype == torch.float32 else load_model(model.path, dtype="float32")


def peer_candidates(
    pair: ModelPair, unaligned: LoadedModel, bench: Bench, method: str, settings=None
) -> list[Candidate]:
    """The method at every setting (or ``settings``), as candidates in the pair's dtype."""
    if method not in SETTINGS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(SETTINGS)}")
    ft, al, un = _float32(pair.finetuned), _float32(pair.base), _float32(unaligned)
    dtype = next(pair.finetuned.hf.parameters()).dtype
    out = []
    for setting in settings or SETTINGS[method]:
        start = time.perf_counter()
        if method == "interpolation":
            model = interpolate(ft, al, setting)
        elif method.startswith("RESTA"):
            model = resta(ft, al, un, setting, dare=0.5 if "DARE" in method else None)
        elif method.startswith("Safe LoRA"):
            projection = "released" if "released" in method else "exact"
            select = {"select": "number", "n_modules": 10} if setting == "10 modules" else {"select": "threshold"}
            model = safe_lora(ft, al, un, projection=projection, threshold=0.5, **select).model
        else:
            aligned = al if "task update" in method else None
            model = antidote(ft, bench.harmful, setting, aligned=aligned, chat=bench.chat)
        seconds = time.perf_counter() - start
        label = f"{method} ({setting:g})" if isinstance(setting, float) else f"{method} ({setting})"
        model = model.with_hf(model.hf.to(dtype), name=label)
        key = f"peer:{method}@{setting}"
        out.append(Candidate(label, model, train_seconds=seconds, plan=key, info={"setting": str(setting)}))
    return out


def peer_rows(
    pair: ModelPair, unaligned: LoadedModel, bench: Bench, dev: EvalSuite, test: EvalSuite, margin: float
) -> tuple[list[PeerRow], list[dict], list[EvalRow]]:
    """Every method's settings judged on ``dev``, its setting chosen by the file's rule, then judged on
    ``test``: the chosen settings, every dev trial, and the test rows (one per method, in ``SETTINGS`` order)."""
    chosen, trials, picked = [], [], []
    safe = safe_set(dev)
    for method in SETTINGS:
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
