"""Restoration (SafeReAct-style): LoRA on the layer map's layers pulls harmful-prompt hidden states back
toward a safe teacher, while a retain loss keeps everything else where the fine-tuned model had it.

Losses, per training step ``t`` of ``T``:

* safety: on harmful prompts, the distance between the student's hidden states (the fine-tuned model
  with LoRA) and a frozen teacher's, at the map's alignment layers and every prompt position.
  Teachers: ``base`` (the aligned model, same prompt) or ``reminder`` (the fine-tuned model with the
  adapters off and a safety reminder appended to the user turn). With the reminder the teacher's
  prompt is longer: student position ``i`` is matched to the teacher's position ``i`` while inside the
  shared prefix (everything up to the end of the instruction), and to the same distance from the end
  afterwards (the closing template tokens); the reminder's own tokens have no partner.
* retain: on harmless and task prompts, the distance between the student's and the frozen fine-tuned
  model's hidden states at every layer and position.
* hidden states: the residual stream after each block (the decoder layer's output, before the final
  norm: the same tensor that capture and the causal checks read, ``interp.core.bridge``).
* distance: L2 norm of the difference per position (default) or ``1 - cosine``, averaged.
* schedule (linear, as in the paper and circuit breakers): ``w_safety(t) = 1 - t / (2T)`` and
  ``w_retain(t) = t / (2T)``, scaled by ``retain_scale``; total loss
  ``w_safety * safety + w_retain * retain``.
* adapters: LoRA of rank ``rank`` and scale ``alpha`` on the map's target modules. Rank and alpha are
  restoration settings (``RestoreConfig``); the layer map only suggests them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm

from ..core.bridge import block_outputs
from ..core.chat import SAFETY_REMINDER, ChatFormat, pad_batch, tokenize
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..errors import ConfigError, TrainingDivergedError
from ..measures.layer_map import LayerMap
from .lora import merged, trainable_parameters

TEACHERS = ("base", "reminder")
DISTANCES = ("l2", "cosine")


@dataclass(frozen=True)
class RestoreConfig:
    steps: int = 36
    lr: float = 3e-3
    batch_size: int = 8
    teacher: str = "base"
    distance: str = "l2"
    retain_scale: float = 1.0
    reminder: str = SAFETY_REMINDER
    rank: int = 8
    alpha: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise ConfigError(f"RestoreConfig: rank and alpha must be >= 1, got {self.rank} and {self.alpha}")
        if self.teacher not in TEACHERS:
            raise ConfigError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.distance not in DISTANCES:
            raise ConfigError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or self.retain_scale < 0:
            raise ConfigError("RestoreConfig: steps and batch_size must be >= 1, lr > 0, retain_scale >= 0")


def schedule(step: int, steps: int) -> tuple[float, float]:
    """``(w_safety, w_retain)`` at ``step`` of ``steps`` (module docstring)."""
    frac = step / (2 * steps)
    return 1.0 - frac, frac


def distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over masked positions of the per-position distance; ``a``, ``b``: ``[batch, seq, d_model]``."""
    if kind == "l2":
        per_position = (a - b).norm(dim=-1)
    else:
        per_position = 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def align_positions(student: list[int], teacher: list[int]) -> list[int]:
    """For each student token, the index of its partner in the teacher's (possibly longer) prompt."""
    shared = 0
    while shared < min(len(student), len(teacher)) and student[shared] == teacher[shared]:
        shared += 1
    shift = len(teacher) - len(student)
    return [i if i < shared else i + shift for i in range(len(student))]


def _hidden(model, seqs: Sequence[Sequence[int]], pad_id: int, layers: Sequence[int]):
    """``(block outputs at layers, mask)`` for ``seqs`` as one left-padded batch."""
    batch = pad_batch(seqs, pad_id)
    return block_outputs(model, batch.to(next(model.parameters()).device), layers), batch.mask


@dataclass
class RestoreStats:
    """What one restoration did: layers, parameters, time and the loss per step."""

    layers: list[int]
    alignment_layers: list[int]
    trainable_params: int
    steps: int
    seconds: float
    config: dict
    history: list[dict] = field(default_factory=list)  # {"step", "safety", "retain"} per step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RestoreStats:
        return cls(**data)


@dataclass
class RestoreResult:
    peft_model: PeftModel  # the fine-tuned model with the trained adapter (not merged)
    stats: RestoreStats

    def merged(self, finetuned: LoadedModel, name: str | None = None) -> LoadedModel:
        """The adapter merged into the weights, as a new ``LoadedModel`` (uses up ``peft_model``)."""
        return merged(finetuned, self.peft_model, name=name)


def restore(
    finetuned: LoadedModel,
    layer_map: LayerMap,
    harmful: PromptSet,
    retain: PromptSet,
    config: RestoreConfig = RestoreConfig(),
    *,
    base: LoadedModel | None = None,
    layers: Sequence[int] | None = None,
    alignment: Sequence[int] | None = None,
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
) -> RestoreResult:
    """Train LoRA on ``finetuned`` (a fresh, un-bridged HF model) where ``layer_map`` says.

    ``layers`` and ``alignment`` override the map's selected and alignment layers (for baselines:
    all layers, random or bottom-k).
    """
    harmful.require_nonempty()
    retain.require_nonempty()
    layer_map.check_model(finetuned)
    if config.teacher == "base" and base is None:
        raise ConfigError("teacher='base' needs the base model (pass base=...)")
    if base is not None:
        layer_map.check_model(base, role="base")
    for name, values in (("layers", layers), ("alignment", alignment)):
        if values is not None and (not values or not all(0 <= layer < layer_map.n_layers for layer in values)):
            raise ConfigError(f"restore: {name} must be a non-empty list of layers in [0, {layer_map.n_layers})")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tok = finetuned.tokenizer
    pad = tok.pad_token_id
    students = chat.encode(tok, harmful.instructions)
    teacher_chat = chat if config.teacher == "base" else chat.with_suffix(config.reminder)
    teachers = teacher_chat.encode(tok, harmful.instructions)
    retains = [tokenize(tok, chat.render(tok, q) + (a or "")) for q, a in zip(retain.instructions, retain.answers)]
    every_layer = list(range(layer_map.n_layers))

    lora = layer_map.to_lora_config(config.rank, config.alpha, layers)
    model = get_peft_model(finetuned.hf, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    align = sorted(set(alignment)) if alignment is not None else list(layer_map.alignment_layers)
    history = []
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(config.steps), desc="restore", disable=not progress):
        picks = rng.sample(range(len(students)), min(config.batch_size, len(students)))
        s_batch, t_batch = [students[i] for i in picks], [teachers[i] for i in picks]
        s_width, t_width = max(map(len, s_batch)), max(map(len, t_batch))
        # index[row, student column] = teacher column of the partner token: [batch, s_width]
        index = torch.tensor([_teacher_index(s, t, s_width, t_width) for s, t in zip(s_batch, t_batch)])
        with torch.no_grad():
            if config.teacher == "base":
                target, _ = _hidden(base.hf, t_batch, pad, align)
            else:
                with model.disable_adapter():
                    target, _ = _hidden(model, t_batch, pad, align)
        target = [t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in target]
        student, s_mask = _hidden(model, s_batch, pad, align)
        safety = sum(distance(s, t, s_mask, config.distance) for s, t in zip(student, target)) / len(align)

        picks = rng.sample(range(len(retains)), min(config.batch_size, len(retains)))
        r_batch = [retains[i] for i in picks]
        with torch.no_grad(), model.disable_adapter():
            frozen, _ = _hidden(model, r_batch, pad, every_layer)
        kept, r_mask = _hidden(model, r_batch, pad, every_layer)
        retain_loss = sum(distance(s, t, r_mask, config.distance) for s, t in zip(kept, frozen)) / len(kept)

        w_safety, w_retain = schedule(step, config.steps)
        loss = w_safety * safety + w_retain * config.retain_scale * retain_loss
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"restore: loss became {loss.item()} at step {step}")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "safety": safety.item(), "retain": retain_loss.item()})
    model.eval()
    stats = RestoreStats(
        layers=sorted(lora.layers_to_transform),
        alignment_layers=align,
        trainable_params=trainable_parameters(model),
        steps=config.steps,
        seconds=round(time.perf_counter() - start, 1),
        config=asdict(config),
        history=history,
    )
    return RestoreResult(model, stats)


def _teacher_index(student: list[int], teacher: list[int], s_width: int, t_width: int) -> list[int]:
    """Teacher column for every student column of left-padded batches (padding maps to padding)."""
    s_pad, t_pad = s_width - len(student), t_width - len(teacher)
    partners = align_positions(student, teacher)
    return [t_pad if col < s_pad else t_pad + partners[col - s_pad] for col in range(s_width)]
