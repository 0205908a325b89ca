"""Restoration (SafeReAct-style): LoRA on the layer map's layers pulls harmful-prompt hidden states back
toward a safe teacher, while a retain loss keeps everything else where the fine-tuned model had it.

The losses (safety and retain, the teacher and how its positions are matched, the distance, the schedule)
are ``interp.training.restore_losses``'s; the settings, the presets and the placements (where LoRA sits and
hidden states are aligned) ``interp.training.restore_config``'s. This module trains them:

* lockstep: ``restore_many`` trains several placements (the study's ranked plan and its baselines) on
  the same batches, so the teacher's pass on the harmful batch and the frozen fine-tuned model's pass
  on the retain batch run once per step for all of them. Every student starts at its lowest LoRA layer
  ``L`` from the frozen fine-tuned model's residual stream entering block ``L`` (exact: nothing below
  ``L`` changes), retain batches run as ``RETAIN_BUCKETS`` length-sorted sub-batches (less padding;
  the loss sums positions over the sub-batches, so it is the loss of the whole batch), and the tokens
  every prompt starts with (the chat template's system turn, about half of a harmful prompt) run once
  per model and step, their keys and values shared by every row (with gradients) and their positions
  counted once per row in the losses. The
  losses are those of training each placement alone, up to float rounding (a test checks 1e-5).
* several processes (``accelerate launch``, ``interp.distributed``): data parallel. Every process draws
  the same global batch (the same seeded sampler) and takes every N-th row of it; the loss of a process
  is its rows' share of the batch loss (sums over its rows divided by the whole batch's token count,
  summed over processes), and the gradients are summed over processes before each optimizer step, so
  every process takes the step of the whole batch: the loss history and the adapter do not depend on
  the number of processes, up to float rounding (without dropout, whose masks differ). Under an FSDP
  launch every student's blocks are sharded over the processes (``interp.distributed.shard``: each holds
  1/N of a student's block weights, LoRA gradients and AdamW state); the same sum is then FSDP's
  reduce-scatter, and at the end only each student's adapter is gathered (``RestoreResult`` builds the
  peft model on first use). Every process must run every sharded block equally often, so each process
  needs ``RETAIN_BUCKETS`` retain rows. The teacher and the frozen model stay whole.
"""

from __future__ import annotations

import copy
import random
import re
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from .. import distributed
from ..core.bridge import block_outputs, decoder_layers, resume_at, unembed
from ..core.chat import ChatFormat, tokenize
from ..core.kvcache import SharedPrefix, after_prefix, run_prefix, shared_length
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..errors import ConfigError, TrainingDivergedError
from ..measures.layer_map import LayerMap, lora_config
from .lora import merged, save_adapter, trainable_parameters
from .restore_config import Placement, RestoreConfig
from .restore_losses import align_positions, distance_sum, next_token_kl_sum, schedule

RETAIN_BUCKETS = 2  # retain batches run as this many length-sorted sub-batches


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
    shared_prefix_tokens: int = 0  # tokens every prompt starts with: run once per model and step
    first_gradient: list[float] = field(default_factory=list)  # per block: squared norm of step 0's LoRA gradient

    @property
    def alone_seconds(self) -> float:
        """What the restoration would cost trained on its own: its own work and every shared pass."""
        return round(self.seconds + self.shared_seconds * (1 - 1 / self.trained_with), 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RestoreStats:
        return cls(**data)


@dataclass
class RestoreResult:
    """A trained restoration: ``peft_model`` is the fine-tuned model with the trained adapter (not merged).

    After a sharded (FSDP) restoration only the adapter is kept, gathered on every process; the peft
    model is built from a fresh copy of the fine-tuned weights on first use, so the restoration itself
    never holds every student whole at once."""

    stats: RestoreStats
    _peft_model: PeftModel | None = field(default=None, repr=False)
    _build: Callable[[], PeftModel] | None = field(default=None, repr=False)
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)  # step -> adapter
    lora: LoraConfig | None = field(default=None, repr=False)

    @property
    def peft_model(self) -> PeftModel:
        if self._peft_model is None:
            self._peft_model, self._build = self._build(), None
        return self._peft_model

    def save(self, folder: str | Path, trained_on: LoadedModel | None = None) -> Path:
        """The adapter in peft's format in ``folder`` (``interp.training.lora.save_adapter``; written
        atomically), loadable with ``PeftModel.from_pretrained``; with ``trained_on`` (the fine-tuned model)
        its fingerprint goes into the weights' metadata so ``apply_adapter`` refuses any other model. Save
        before ``merged``, which uses the adapter up."""
        return save_adapter(self.peft_model, folder, trained_on=None if trained_on is None else trained_on.fingerprint)

    def merged(self, finetuned: LoadedModel, name: str | None = None) -> LoadedModel:
        """The adapter merged into the weights, as a new ``LoadedModel`` (uses up ``peft_model``)."""
        return merged(finetuned, self.peft_model, name=name)

    def peft_at(self, step: int, finetuned: LoadedModel) -> PeftModel:
        """The adapter as it was after ``step`` steps (one of ``restore_many``'s ``checkpoints``) on a fresh
        copy of the weights."""
        if step not in self.checkpoints:
            raise ConfigError(f"no checkpoint at step {step}; the restoration kept {sorted(self.checkpoints)}")
        return _whole(finetuned, self.lora, self.checkpoints[step])

    def merged_at(self, step: int, finetuned: LoadedModel, name: str | None = None) -> LoadedModel:
        """The adapter after ``step`` steps merged into a fresh copy of the weights (``peft_at``)."""
        return merged(finetuned, self.peft_at(step, finetuned), name=name)


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
    """Train LoRA on a fresh copy of ``finetuned`` (un-bridged HF) where ``layer_map`` says: on each
    entry's modules (a version 2 map may name, say, only ``o_proj`` of a layer).

    ``layers`` and ``alignment`` override the map's selected and alignment layers (for baselines:
    all layers, random or bottom-k; whole blocks). One placement of ``restore_many``.
    """
    whole_blocks = all(set(names) == set(layer_map.target_modules) for names in layer_map.modules.values())
    placement = Placement(
        tuple(sorted(layers if layers is not None else layer_map.selected_layers)),
        tuple(sorted(set(alignment if alignment is not None else layer_map.alignment_layers))),
        () if layers is not None or whole_blocks else tuple((k, tuple(v)) for k, v in layer_map.modules.items()),
    )
    (result,) = restore_many(
        finetuned, layer_map, harmful, retain, [placement], config, base=base, chat=chat, progress=progress
    )
    return result


def _forward(
    model, inputs: dict, layers: Sequence[int], start: int = 0, below: dict[int, torch.Tensor] | None = None
) -> dict[int, torch.Tensor]:
    """Block outputs at ``layers`` of a forward that runs blocks ``start ..`` only: ``below[start - 1]``
    enters block ``start``, and ``below[l]`` stands for every ``l < start`` asked for (the frozen model's
    states on the same tokens: the blocks below ``start`` carry no adapter)."""
    ran = [layer for layer in layers if layer >= start]
    out = {layer: below[layer] for layer in layers if layer < start}
    if ran:
        with resume_at(model, start, below[start - 1]) if start > 0 else nullcontext():
            out.update(zip(ran, block_outputs(model, inputs, ran)))
    return out


def _trainable_copy(hf):
    """A copy of ``hf`` to put LoRA on. On a CPU in bfloat16/float16 it attends eagerly (matmul, softmax in
    float32, matmul): there torch's flash-attention kernel is fast forward but slow backward (forward and
    backward at [4 rows, 9 heads, 75 x 99 positions]: 5.3 ms flash, 1.9 ms eager; 2 threads, bf16)."""
    model = copy.deepcopy(hf)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        model.set_attn_implementation("eager")
    return model


class _Student:
    """One placement in training: its peft model, optimizer, history and the time of its own work."""

    def __init__(self, finetuned: LoadedModel, layer_map: LayerMap, placement: Placement, config: RestoreConfig):
        torch.manual_seed(config.seed)  # LoRA's initial weights: the same as when this placement trains alone
        self.placement = placement
        self.start = placement.start
        self.layers = sorted(placement.layers)
        self.align = sorted(set(placement.alignment))
        self.lora = (
            lora_config(
                {layer: list(names) for layer, names in placement.modules}, config.rank, config.alpha, config.dropout
            )
            if placement.modules
            else layer_map.to_lora_config(config.rank, config.alpha, placement.layers, config.dropout)
        )
        self.model = get_peft_model(_trainable_copy(finetuned.hf), self.lora)  # the weights in memory
        self.model.train()
        if distributed.sharded():  # FSDP: each process keeps 1/N of every block (interp.distributed)
            distributed.shard(self.model, decoder_layers(self.model))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = params
        self.optimizer = torch.optim.AdamW(params, lr=placement.lr or config.lr, weight_decay=0.0)
        self.seconds = 0.0
        self.history: list[dict] = []
        self.checkpoints: dict[int, dict[str, torch.Tensor]] = {}
        self.first_gradient: list[float] = []


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
    checkpoints: Sequence[int] = (),
    progress: bool = True,
) -> list[RestoreResult]:
    """Train one LoRA restoration per placement, in lockstep (module docstring), each on a fresh copy of
    ``finetuned``; ``finetuned`` itself stays unchanged (it is the frozen model of the retain loss).
    ``checkpoints``: steps after which each adapter's weights are kept (``RestoreResult.merged_at``: a
    strength sweep from one run)."""
    harmful.require_nonempty()
    retain.require_nonempty()
    layer_map.check_model(finetuned)
    for prompts in (harmful, retain):
        finetuned.check_fits(prompts, chat)
    if config.teacher == "base" and base is None:
        raise ConfigError("teacher='base' needs the base model (pass base=...)")
    if base is not None:
        layer_map.check_model(base, role="base")
    if not placements:
        raise ConfigError("restore: no placements to train")
    if any(not 1 <= step <= config.steps for step in checkpoints):
        raise ConfigError(f"restore: checkpoints must be steps in [1, {config.steps}], got {list(checkpoints)}")
    if min(config.batch_size, len(harmful), len(retain)) < distributed.world():
        raise ConfigError(
            f"restore: a batch of {config.batch_size} cannot give each of {distributed.world()} processes a row"
        )
    if distributed.sharded() and min(config.batch_size, len(retain)) < RETAIN_BUCKETS * distributed.world():
        raise ConfigError(  # every process runs every sharded block equally often: RETAIN_BUCKETS retain parts
            f"restore: with FSDP a batch of {config.batch_size} cannot give each of {distributed.world()} processes"
            f" {RETAIN_BUCKETS} retain rows"
        )
    for placement in placements:
        for name, values in (("layers", placement.layers), ("alignment", placement.alignment)):
            if not values or not all(0 <= layer < layer_map.n_layers for layer in values):
                raise ConfigError(f"restore: {name} must be a non-empty list of layers in [0, {layer_map.n_layers})")
    rng = random.Random(config.seed)
    tok = finetuned.tokenizer
    harmful_chat = replace(chat, prefill=chat.prefill + config.harmful_prefill)
    teacher_chat = harmful_chat if config.teacher == "base" else harmful_chat.with_suffix(config.reminder)
    student_ids, teacher_ids = (
        harmful_chat.encode(tok, harmful.instructions),
        teacher_chat.encode(tok, harmful.instructions),
    )
    answer_tokens = [0] * len(student_ids)  # per harmful prompt: the tokens of its own answer (harmful_answers)
    if config.harmful_answers:
        if len(harmful.answers) != len(harmful) or any(a is None for a in harmful.answers):
            raise ConfigError(f"restore: harmful_answers needs an answer for every prompt of {harmful.name!r}")
        with_answers = [
            tokenize(tok, harmful_chat.render(tok, q) + a) for q, a in zip(harmful.instructions, harmful.answers)
        ]
        answer_tokens = [len(w) - len(s) for w, s in zip(with_answers, student_ids)]
        student_ids = with_answers
        teacher_ids = [
            tokenize(tok, teacher_chat.render(tok, q) + a) for q, a in zip(harmful.instructions, harmful.answers)
        ]
    retains = [tokenize(tok, chat.render(tok, q) + (a or "")) for q, a in zip(retain.instructions, retain.answers)]
    n_layers = layer_map.n_layers
    teacher = base if config.teacher == "base" else finetuned  # the reminder teacher: adapters off
    frozen = finetuned.hf.eval()

    students = [_Student(finetuned, layer_map, p, config) for p in placements]
    aligned = sorted({layer for s in students for layer in s.align})
    last = n_layers - 1
    logits_from = [last] if config.answer_kl else []  # the last block's output, for the answer's next-token KL
    # the frozen model's block outputs on harmful prompts that students read below their start
    below_harmful = sorted(
        {s.start - 1 for s in students if s.start > 0}
        | {layer for s in students for layer in s.align if layer < s.start}
    )
    t0 = time.perf_counter()
    shared = student_ids[0][: shared_length(student_ids + teacher_ids + retains)]  # the chat template's system turn
    P = len(shared)
    every = [(layer, "resid_post") for layer in range(n_layers)]  # the prefix's block outputs, for the losses
    pad = tok.pad_token_id
    with torch.no_grad():
        frozen_prefix = run_prefix(frozen, shared, every)
        teacher_prefix = run_prefix(teacher.hf, shared, every) if teacher is not finetuned else frozen_prefix
    shared_seconds = time.perf_counter() - t0
    for step in tqdm(range(config.steps), desc="restore", disable=not progress):
        t0 = time.perf_counter()
        picks = distributed.split(rng.sample(range(len(student_ids)), min(config.batch_size, len(student_ids))))
        s_batch, t_batch = [student_ids[i] for i in picks], [teacher_ids[i] for i in picks]
        # per row, the aligned positions at the end (safety_positions > 0): n, and its answer's tokens after them
        tails = torch.tensor([config.safety_positions + answer_tokens[i] for i in picks])
        s_width, t_width = max(map(len, s_batch)) - P, max(map(len, t_batch)) - P
        # index[row, student column] = teacher column of the partner token, after the prefix: [batch, s_width]
        index = torch.tensor([_teacher_index(s[P:], t[P:], s_width, t_width) for s, t in zip(s_batch, t_batch)])
        with torch.no_grad():
            t_inputs = after_prefix(t_batch, teacher_prefix, pad, teacher.device)
            target = {
                layer: t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))
                for layer, t in _forward(teacher.hf, t_inputs, sorted(set(aligned + logits_from))).items()
            }
            held = aligned if config.before_answer == "finetuned" else []  # the trace's target: the frozen model
            below = _forward(frozen, after_prefix(s_batch, frozen_prefix, pad, finetuned.device),
                             sorted(set(below_harmful) | set(held)))  # fmt: skip
            picks = distributed.split(rng.sample(range(len(retains)), min(config.batch_size, len(retains))))
            buckets = []  # (rows, the frozen model's block outputs at every layer) per length-sorted sub-batch
            for part in _length_buckets([retains[i] for i in picks], RETAIN_BUCKETS):
                kept = _forward(frozen, after_prefix(part, frozen_prefix, pad, finetuned.device), range(n_layers))
                buckets.append((part, kept))
        w_safety, w_retain = schedule(step, config.steps, config.schedule_span)
        shared_seconds += time.perf_counter() - t0

        for student in students:
            t0 = time.perf_counter()
            L = student.start
            prefix = run_prefix(student.model, shared, every, start=L, below=frozen_prefix)  # with gradients
            ones = torch.ones(1, P, device=finetuned.device)

            def on_prefix(layer: int, reference: SharedPrefix, rows: int, prefix=prefix, ones=ones) -> torch.Tensor:
                """The distance summed over the prefix positions of ``rows`` rows (the same in every row)."""
                ours, theirs = prefix.outputs[layer, "resid_post"], reference.outputs[layer, "resid_post"]
                return rows * distance_sum(ours, theirs, ones, config.distance)

            s_inputs = after_prefix(s_batch, prefix, pad, finetuned.device)
            s_mask = s_inputs["attention_mask"][:, P:]  # [batch, rest]
            hidden = _forward(student.model, s_inputs, sorted(set(student.align + logits_from)), L, below)
            n = int(tails.max()) if config.safety_positions else 0  # > 0: each row's last tails[row] positions
            before = None
            if n:  # left padding: a row's last positions are the batch's last columns
                columns = torch.arange(s_mask.shape[1], device=s_mask.device)
                answer = (columns[None, :] >= s_mask.shape[1] - tails[:, None].to(s_mask.device)).to(s_mask.dtype)
                before, s_mask = s_mask * (1 - answer), answer
            count = distributed.all_sum((0 if n else len(s_batch) * P) + s_mask.sum())  # over the whole batch
            safety = sum(
                (0 if n else on_prefix(layer, teacher_prefix, len(s_batch)))
                + distance_sum(hidden[layer], target[layer], s_mask, config.distance)
                for layer in student.align
            ) / (count * len(student.align))
            if config.answer_kl:  # the answer positions' next-token distributions, to the teacher's
                ours, theirs = unembed(student.model, hidden[last][:, -n:]), unembed(teacher.hf, target[last][:, -n:])
                kl = next_token_kl_sum(ours, theirs, s_mask[:, -n:]) / distributed.all_sum(s_mask.sum())
                safety = safety + config.answer_kl * kl
            if config.before_answer == "finetuned":  # the earlier positions held at the frozen model's states
                count = distributed.all_sum(len(s_batch) * P + before.sum())  # the system turn's positions too
                safety = safety + sum(
                    on_prefix(layer, frozen_prefix, len(s_batch))
                    + distance_sum(hidden[layer], below[layer], before, config.distance)
                    for layer in student.align
                ) / (count * len(student.align))
            rows = sum(len(part) for part, _ in buckets)
            sums = [on_prefix(layer, frozen_prefix, rows) for layer in range(L, n_layers)]  # below L: exactly 0
            count = rows * P
            for part, kept in buckets:
                r_inputs = after_prefix(part, prefix, pad, finetuned.device)
                r_mask = r_inputs["attention_mask"][:, P:]
                outs = _forward(student.model, r_inputs, range(L, n_layers), L, kept)
                sums = [
                    total + distance_sum(outs[layer], kept[layer], r_mask, config.distance)
                    for total, layer in zip(sums, range(L, n_layers))
                ]
                count = count + r_mask.sum()
            count = distributed.all_sum(torch.as_tensor(count, device=finetuned.device))
            retain_loss = sum(total / count for total in sums) / n_layers
            loss = config.loss_scale * (w_safety * safety + w_retain * config.retain_scale * retain_loss)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"restore: loss became {loss.item()} at step {step}")
            loss.backward()  # with FSDP the blocks' gradients are summed over the processes here
            if not distributed.sharded():
                for parameter in student.trainable:  # each process's rows' share of the batch's gradient
                    distributed.all_sum(parameter.grad)
            if step == 0:
                student.first_gradient = _block_gradients(student.model, n_layers)
            student.optimizer.step()
            student.optimizer.zero_grad(set_to_none=True)
            losses = distributed.all_sum(torch.stack([safety.detach(), retain_loss.detach()])).tolist()
            student.history.append({"step": step, "safety": losses[0], "retain": losses[1]})
            if config.answer_kl:
                student.history[-1]["kl"] = distributed.all_sum(kl.detach()).item()
            student.seconds += time.perf_counter() - t0
            if step + 1 in checkpoints:
                student.checkpoints[step + 1] = _adapter_state(student.model)

    results = []
    for student in students:
        trainable = trainable_parameters(student.model)  # a sharded parameter counts its whole shape
        if distributed.sharded():  # the adapter's shards gathered (every process), the sharded copy freed
            state = _adapter_state(student.model)
            student.model, student.optimizer, student.trainable = None, None, []
            result = partial(RestoreResult, _build=partial(_whole, finetuned, student.lora, state))
        else:
            result = partial(RestoreResult, _peft_model=student.model.eval())
        stats = RestoreStats(
            layers=student.layers,
            alignment_layers=student.align,
            trainable_params=trainable,
            steps=config.steps,
            seconds=round(student.seconds + shared_seconds / len(students), 1),
            config=asdict(config),
            history=student.history,
            shared_seconds=round(shared_seconds, 1),
            trained_with=len(students),
            shared_prefix_tokens=P,
            first_gradient=student.first_gradient,
        )
        results.append(result(stats, checkpoints=student.checkpoints, lora=student.lora))
    return results


def _block_gradients(model: PeftModel, n_layers: int) -> list[float]:
    """Per block, the squared norm of the gradient of the trainable (LoRA) weights (0 without any). At
    step 0 the LoRA B matrices are zero, so this is ``||dL/dB||^2``: a first-order measure of how fast a
    LoRA in that block can lower the loss (``interp.protocol.layers``)."""
    out = [0.0] * n_layers
    for name, parameter in model.named_parameters():
        found = re.search(r"\.layers\.(\d+)\.", name)
        if parameter.grad is not None and found:
            grad = parameter.grad.full_tensor() if distributed.sharded() else parameter.grad
            out[int(found.group(1))] += float(grad.float().pow(2).sum())
    return out


def _adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """A copy of the adapter's weights (whole: a sharded parameter's shards gathered on every process)."""
    state = get_peft_model_state_dict(model)
    return {key: (v.full_tensor() if distributed.sharded() else v).detach().clone() for key, v in state.items()}


def _whole(finetuned: LoadedModel, lora: LoraConfig, state: dict[str, torch.Tensor]) -> PeftModel:
    """A plain peft model with the adapter ``state`` on a fresh copy of ``finetuned`` (the weights LoRA does
    not touch are the frozen fine-tuned model's)."""
    model = get_peft_model(copy.deepcopy(finetuned.hf), lora)
    set_peft_model_state_dict(model, state)
    return model.eval()


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
