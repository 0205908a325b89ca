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
* lockstep: ``restore_many`` trains several placements (the study's ranked plan and its baselines) on
  the same batches, so the teacher's pass on the harmful batch and the frozen fine-tuned model's pass
  on the retain batch run once per step for all of them. Every student starts at its lowest LoRA layer
  ``L`` from the frozen fine-tuned model's residual stream entering block ``L`` (exact: nothing below
  ``L`` changes), and retain batches run as ``RETAIN_BUCKETS`` length-sorted sub-batches (less
  padding; the loss sums positions over the sub-batches, so it is the loss of the whole batch). The
  losses are those of training each placement alone, up to float rounding (a test checks 1e-5).
* adapters: LoRA of rank ``rank`` and scale ``alpha`` on the map's target modules. Rank and alpha are
  restoration settings (``RestoreConfig``); the layer map only suggests them.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm

from ..core.bridge import block_outputs, resume_at
from ..core.chat import SAFETY_REMINDER, ChatFormat, pad_batch, tokenize
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..errors import ConfigError, TrainingDivergedError
from ..measures.layer_map import LayerMap
from .lora import merged, trainable_parameters

TEACHERS = ("base", "reminder")
DISTANCES = ("l2", "cosine")
RETAIN_BUCKETS = 2  # retain batches run as this many length-sorted sub-batches


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


def _distance_sum(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over masked positions of the per-position distance; ``a``, ``b``: ``[batch, seq, d_model]``."""
    if kind == "l2":
        per_position = (a - b).norm(dim=-1)
    else:
        per_position = 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return (per_position * mask).sum()


def distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over masked positions of the per-position distance; ``a``, ``b``: ``[batch, seq, d_model]``."""
    return _distance_sum(a, b, mask, kind) / mask.sum().clamp(min=1)


def align_positions(student: list[int], teacher: list[int]) -> list[int]:
    """For each student token, the index of its partner in the teacher's (possibly longer) prompt."""
    shared = 0
    while shared < min(len(student), len(teacher)) and student[shared] == teacher[shared]:
        shared += 1
    shift = len(teacher) - len(student)
    return [i if i < shared else i + shift for i in range(len(student))]


@dataclass(frozen=True)
class Placement:
    """Where one restoration puts LoRA (``layers``) and where it aligns hidden states (``alignment``)."""

    layers: tuple[int, ...]
    alignment: tuple[int, ...]

    @property
    def start(self) -> int:
        """The lowest LoRA layer: below it the student's residual stream is the fine-tuned model's."""
        return min(self.layers)


@dataclass
class RestoreStats:
    """What one restoration did: layers, parameters, time and the loss per step.

    ``seconds``: the restoration's own work plus its share (``shared_seconds / trained_with``) of the
    passes shared by the ``trained_with`` placements trained in lockstep with it (itself included).
    """

    layers: list[int]
    alignment_layers: list[int]
    trainable_params: int
    steps: int
    seconds: float
    config: dict
    history: list[dict] = field(default_factory=list)  # {"step", "safety", "retain"} per step
    shared_seconds: float = 0.0
    trained_with: int = 1

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
    """Train LoRA on a fresh copy of ``finetuned`` (un-bridged HF) where ``layer_map`` says.

    ``layers`` and ``alignment`` override the map's selected and alignment layers (for baselines:
    all layers, random or bottom-k). One placement of ``restore_many``.
    """
    placement = Placement(
        tuple(sorted(layers if layers is not None else layer_map.selected_layers)),
        tuple(sorted(set(alignment if alignment is not None else layer_map.alignment_layers))),
    )
    (result,) = restore_many(
        finetuned, layer_map, harmful, retain, [placement], config, base=base, chat=chat, progress=progress
    )
    return result


class _Student:
    """One placement in training: its peft model, optimizer, history and the time of its own work."""

    def __init__(self, finetuned: LoadedModel, layer_map: LayerMap, placement: Placement, config: RestoreConfig):
        torch.manual_seed(config.seed)  # LoRA's initial weights: the same as when this placement trains alone
        self.placement = placement
        self.align = sorted(set(placement.alignment))
        self.lora = layer_map.to_lora_config(config.rank, config.alpha, placement.layers)
        self.model = get_peft_model(copy.deepcopy(finetuned.hf), self.lora)  # the weights in memory
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        self.seconds = 0.0
        self.history: list[dict] = []

    def hidden(
        self, inputs: dict[str, torch.Tensor], layers: Sequence[int], below: dict[int, torch.Tensor]
    ) -> list[torch.Tensor]:
        """Block outputs at ``layers``, each ``[batch, seq, d_model]``. ``below[l]``: the frozen model's block
        output on the same batch, for ``l = start - 1`` (where this student's forward resumes) and every
        ``l < start`` in ``layers``."""
        start = self.placement.start
        ran = [layer for layer in layers if layer >= start]
        outs = {layer: below[layer] for layer in layers if layer < start}
        if ran:
            if start == 0:
                outs.update(zip(ran, block_outputs(self.model, inputs, ran)))
            else:
                with resume_at(self.model, start, below[start - 1]):
                    outs.update(zip(ran, block_outputs(self.model, inputs, ran)))
        return [outs[layer] for layer in layers]


def restore_many(
    finetuned: LoadedModel,
    layer_map: LayerMap,
    harmful: PromptSet,
    retain: PromptSet,
    placements: Sequence[Placement],
    config: RestoreConfig = RestoreConfig(),
    *,
    base: LoadedModel | None = None,
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
) -> list[RestoreResult]:
    """Train one LoRA restoration per placement, in lockstep (module docstring), each on a fresh copy of
    ``finetuned``; ``finetuned`` itself stays unchanged (it is the frozen model of the retain loss)."""
    harmful.require_nonempty()
    retain.require_nonempty()
    layer_map.check_model(finetuned)
    if config.teacher == "base" and base is None:
        raise ConfigError("teacher='base' needs the base model (pass base=...)")
    if base is not None:
        layer_map.check_model(base, role="base")
    if not placements:
        raise ConfigError("restore: no placements to train")
    for placement in placements:
        for name, values in (("layers", placement.layers), ("alignment", placement.alignment)):
            if not values or not all(0 <= layer < layer_map.n_layers for layer in values):
                raise ConfigError(f"restore: {name} must be a non-empty list of layers in [0, {layer_map.n_layers})")
    rng = random.Random(config.seed)
    tok = finetuned.tokenizer
    student_ids = chat.encode(tok, harmful.instructions)
    teacher_chat = chat if config.teacher == "base" else chat.with_suffix(config.reminder)
    teacher_ids = teacher_chat.encode(tok, harmful.instructions)
    retains = [tokenize(tok, chat.render(tok, q) + (a or "")) for q, a in zip(retain.instructions, retain.answers)]
    n_layers = layer_map.n_layers
    teacher = base if config.teacher == "base" else finetuned  # the reminder teacher: adapters off
    frozen = finetuned.hf.eval()

    students = [_Student(finetuned, layer_map, p, config) for p in placements]
    aligned = sorted({layer for s in students for layer in s.align})
    # the frozen model's block outputs on harmful prompts that students read below their start
    below_harmful = sorted(
        {s.placement.start - 1 for s in students if s.placement.start > 0}
        | {layer for s in students for layer in s.align if layer < s.placement.start}
    )
    shared_seconds = 0.0
    for step in tqdm(range(config.steps), desc="restore", disable=not progress):
        t0 = time.perf_counter()
        picks = rng.sample(range(len(student_ids)), min(config.batch_size, len(student_ids)))
        s_batch, t_batch = [student_ids[i] for i in picks], [teacher_ids[i] for i in picks]
        s_width, t_width = max(map(len, s_batch)), max(map(len, t_batch))
        # index[row, student column] = teacher column of the partner token: [batch, s_width]
        index = torch.tensor([_teacher_index(s, t, s_width, t_width) for s, t in zip(s_batch, t_batch)])
        s_inputs, s_mask = _inputs(finetuned, s_batch)
        with torch.no_grad():
            t_inputs, _ = _inputs(teacher, t_batch)
            targets = block_outputs(teacher.hf, t_inputs, aligned)
            target = {l: t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for l, t in zip(aligned, targets)}
            below = dict(zip(below_harmful, block_outputs(frozen, s_inputs, below_harmful))) if below_harmful else {}
            picks = rng.sample(range(len(retains)), min(config.batch_size, len(retains)))
            buckets = []  # (inputs, mask, the frozen model's block outputs at every layer) per sub-batch
            for part in _length_buckets([retains[i] for i in picks], RETAIN_BUCKETS):
                r_inputs, r_mask = _inputs(finetuned, part)
                buckets.append((r_inputs, r_mask, block_outputs(frozen, r_inputs, range(n_layers))))
        r_count = sum(mask.sum() for _, mask, _ in buckets).clamp(min=1)
        w_safety, w_retain = schedule(step, config.steps)
        shared_seconds += time.perf_counter() - t0

        for student in students:
            t0 = time.perf_counter()
            hidden = student.hidden(s_inputs, student.align, below)
            safety = sum(distance(h, target[l], s_mask, config.distance) for h, l in zip(hidden, student.align))
            safety = safety / len(student.align)
            start = student.placement.start
            sums = [torch.zeros(())] * (n_layers - start)  # per layer from the start; below it the distance is 0
            for r_inputs, r_mask, kept in buckets:
                outs = student.hidden(r_inputs, range(start, n_layers), {start - 1: kept[start - 1]} if start else {})
                sums = [
                    total + _distance_sum(out, kept[start + i], r_mask, config.distance)
                    for i, (total, out) in enumerate(zip(sums, outs))
                ]
            retain_loss = sum(total / r_count for total in sums) / n_layers
            loss = w_safety * safety + w_retain * config.retain_scale * retain_loss
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"restore: loss became {loss.item()} at step {step}")
            loss.backward()
            student.optimizer.step()
            student.optimizer.zero_grad(set_to_none=True)
            student.history.append({"step": step, "safety": safety.item(), "retain": retain_loss.item()})
            student.seconds += time.perf_counter() - t0

    results = []
    for student in students:
        student.model.eval()
        stats = RestoreStats(
            layers=sorted(student.lora.layers_to_transform),
            alignment_layers=student.align,
            trainable_params=trainable_parameters(student.model),
            steps=config.steps,
            seconds=round(student.seconds + shared_seconds / len(students), 1),
            config=asdict(config),
            history=student.history,
            shared_seconds=round(shared_seconds, 1),
            trained_with=len(students),
        )
        results.append(RestoreResult(student.model, stats))
    return results


def _inputs(model: LoadedModel, seqs: Sequence[Sequence[int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(forward kwargs, mask [batch, seq])`` of ``seqs`` as one left-padded batch."""
    batch = pad_batch(seqs, model.tokenizer.pad_token_id)
    return batch.to(model.device), batch.mask.to(model.device)


def _length_buckets(seqs: list[list[int]], n: int) -> list[list[list[int]]]:
    """``seqs`` sorted by length (stable) and cut into ``n`` near-equal consecutive parts, none empty."""
    ordered = sorted(seqs, key=len)
    n = max(1, min(n, len(ordered)))
    size, extra = divmod(len(ordered), n)
    parts, at = [], 0
    for i in range(n):
        parts.append(ordered[at : at + size + (i < extra)])
        at += size + (i < extra)
    return parts


def _teacher_index(student: list[int], teacher: list[int], s_width: int, t_width: int) -> list[int]:
    """Teacher column for every student column of left-padded batches (padding maps to padding)."""
    s_pad, t_pad = s_width - len(student), t_width - len(teacher)
    partners = align_positions(student, teacher)
    return [t_pad if col < s_pad else t_pad + partners[col - s_pad] for col in range(s_width)]
