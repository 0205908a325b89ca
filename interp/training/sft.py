"""Supervised LoRA fine-tuning on (prompt, answer) pairs, merged back into the weights.

Used to build model organisms (a safety-tuned base, then a benign task fine-tune). Loss is next-token
cross-entropy on the answer tokens only, averaged over the batch's answer tokens; the prompt is rendered
with the model's chat template. Under several processes (``interp.distributed``) each takes every N-th row
of the batch, its loss is its rows' cross-entropy summed over the whole batch's answer-token count, and
the gradients are summed over the processes before each step: the losses and the adapter are those of
one process, up to float rounding.

``compute_dtype="bfloat16"`` runs the forward and backward passes under ``torch.autocast``: matrix
products in bf16 (the frozen weights are cast as they are used), while the weights, the LoRA parameters,
their gradients and AdamW's moments stay in the model's dtype (float32), and the cross-entropy is taken
on float32 logits. The merged weights are float32 either way.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from .. import distributed
from ..core.chat import ChatFormat, tokenize
from ..core.models import LINEAR_MODULES, LoadedModel
from ..errors import ConfigError, EmptyPromptSetError, TrainingDivergedError
from .lora import adapter_state, merge_adapter_state, trainable_parameters

ADAPTER_DTYPES = {"float16": torch.float16, "float32": torch.float32}
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 50
    lr: float = 5e-4
    batch_size: int = 8
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = LINEAR_MODULES
    max_answer_tokens: int = 96
    adapter_dtype: str = "float16"  # the trained adapter is rounded to this before it is merged (and stored)
    seed: int = 0
    compute_dtype: str = "float32"  # "bfloat16": forward and backward under bf16 autocast (module docstring)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "rank", "alpha", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SFTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"SFTConfig.lr must be > 0, got {self.lr}")
        if not self.target_modules:
            raise ConfigError("SFTConfig.target_modules is empty")
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise ConfigError(f"SFTConfig.adapter_dtype must be one of {sorted(ADAPTER_DTYPES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"SFTConfig.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}")

    def lora_config(self, layers: Sequence[int] | None = None) -> LoraConfig:
        """The adapters: every ``target_modules`` module of every block, or of ``layers`` only."""
        where = {} if layers is None else {"layers_to_transform": sorted(layers), "layers_pattern": "layers"}
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=0.0,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
            **where,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SFTResult:
    """The fine-tuned model (adapter merged), the adapter itself and what training did."""

    model: LoadedModel
    adapter: dict[str, torch.Tensor]  # peft state dict in ``config.adapter_dtype`` (what was merged)
    stats: dict


@dataclass(frozen=True)
class Example:
    instruction: str
    answer: str


def _encode(model: LoadedModel, examples: Sequence[Example], chat: ChatFormat, max_answer_tokens: int):
    """Token ids and labels (-100 on the prompt) for each example."""
    tokenizer = model.tokenizer
    encoded = []
    for ex in examples:
        prompt = tokenize(tokenizer, chat.render(tokenizer, ex.instruction))
        answer = tokenize(tokenizer, ex.answer)
        # A truncated answer gets no end-of-turn token: the model must not learn to stop mid-sentence.
        answer = answer[:max_answer_tokens] if len(answer) > max_answer_tokens else answer + [tokenizer.eos_token_id]
        encoded.append((prompt + answer, [-100] * len(prompt) + answer))
    return encoded


def _collate(batch, pad_id: int):
    """Right-padded ``(ids, labels, mask)`` for training (labels ``-100`` on prompt and padding)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (seq, lab) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return ids, labels, mask


def _answer_loss(
    causal_lm, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum, count)``: next-token cross-entropy summed over the answer tokens, and their number,
    computing logits only where there is a label.

    ``sum / count`` is the model's own ``labels=`` loss, without projecting every prompt position onto
    the vocabulary (a large share of the step on a small model with a 49k vocabulary).
    """
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [batch, seq, d_model]
    targets = labels[:, 1:]  # [batch, seq - 1]
    keep = targets != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep])  # [n_answer_tokens, d_vocab]
    total = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return total, keep.sum().float()


def sft_lora(
    model: LoadedModel,
    examples: Sequence[Example],
    config: SFTConfig,
    *,
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
    desc: str = "sft",
    layers: Sequence[int] | None = None,
) -> SFTResult:
    """Train LoRA adapters on ``examples`` for ``config.steps`` steps, round them to
    ``config.adapter_dtype`` and merge them into the weights (``model.hf`` is used up). ``layers``: adapters
    on these blocks only (``None``: every block).

    The merge goes through ``merge_adapter_state``, as a stored adapter would: the same adapter read back
    from a file gives bit-identical weights.
    """
    _check(examples, config, desc)
    torch.manual_seed(config.seed)
    encoded = _encode(model, examples, chat, config.max_answer_tokens)
    lora = config.lora_config(layers)
    peft_model = get_peft_model(model.hf, lora)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    stats = _train(peft_model.get_base_model(), params, encoded, config, model, desc, progress)
    stats["trainable_params"] = trainable_parameters(peft_model)
    adapter = adapter_state(peft_model, ADAPTER_DTYPES[config.adapter_dtype])
    plain = model.with_hf(peft_model.unload())  # the weights without the adapter
    return SFTResult(merge_adapter_state(plain, adapter, lora), adapter, stats)


def sft_full(
    model: LoadedModel,
    examples: Sequence[Example],
    config: SFTConfig,
    *,
    chat: ChatFormat = ChatFormat(),
    progress: bool = True,
    desc: str = "full sft",
) -> SFTResult:
    """Train every weight of ``model`` on ``examples`` (full fine-tuning: no adapter, nothing removable; the
    same loss, batches and schedule as ``sft_lora``; ``config``'s LoRA settings unused). ``model.hf`` is
    used up; the result's ``adapter`` is empty."""
    _check(examples, config, desc)
    torch.manual_seed(config.seed)
    encoded = _encode(model, examples, chat, config.max_answer_tokens)
    hf = model.hf
    hf.train()
    params = list(hf.parameters())
    for parameter in params:
        parameter.requires_grad_(True)
    stats = _train(hf, params, encoded, config, model, desc, progress)
    for parameter in params:
        parameter.requires_grad_(False)
    stats["trainable_params"] = sum(p.numel() for p in params)
    return SFTResult(model.with_hf(hf), {}, stats)


def _check(examples: Sequence[Example], config: SFTConfig, desc: str) -> None:
    if not examples:
        raise EmptyPromptSetError("fine-tuning was given no examples")
    if config.batch_size < distributed.world():
        raise ConfigError(
            f"{desc}: a batch of {config.batch_size} cannot give each of {distributed.world()} processes a row"
        )


def _train(causal_lm, params: list, encoded, config: SFTConfig, model: LoadedModel, desc: str, progress: bool) -> dict:
    """The training loop both fine-tunes share (module docstring): AdamW on ``params``, linear warm-up over 5
    steps then linear decay, batches drawn from a seeded shuffle of ``encoded``. Returns the run's stats."""
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 5) * (1 - step / config.steps)
    )
    order: list[int] = []
    losses = []
    start = time.perf_counter()
    for _ in tqdm(range(config.steps), desc=desc, disable=not progress):
        if len(order) < config.batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: config.batch_size], order[config.batch_size :]
        rows = [encoded[i] for i in distributed.split(batch)]  # this process's rows (every row on one)
        ids, labels, mask = _collate(rows, model.tokenizer.pad_token_id)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.compute_dtype == "bfloat16"):
            total, count = _answer_loss(causal_lm, *(t.to(model.device) for t in (ids, mask, labels)))
        loss = total / distributed.all_sum(count).clamp(min=1)  # this process's share of the batch loss
        whole = distributed.all_sum(loss.detach().clone()).item()
        if not math.isfinite(whole):
            raise TrainingDivergedError(f"{desc}: loss became {whole} at step {len(losses)}")
        loss.backward()
        for parameter in params:
            distributed.all_sum(parameter.grad)  # the whole batch's gradient
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(whole)
    return {
        "steps": config.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first": round(losses[0], 4),
        "loss_last": round(sum(losses[-5:]) / len(losses[-5:]), 4),
    }
