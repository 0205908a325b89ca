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
* distance: L2 norm of the difference per position (default) or ``1 - cosine``, averaged.
* schedule (linear, as in the paper and circuit breakers): ``w_safety(t) = 1 - t / (2T)`` and
  ``w_retain(t) = t / (2T)``, scaled by ``retain_scale``; total loss
  ``w_safety * safety + w_retain * retain``.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import ConfigError
from .io import atomic_dir
from .models import LoadedModel
from .prompts import SAFETY_REMINDER, ChatFormat, PromptSet
from .ranking import LayerMap
from .tokens import left_pad, position_ids

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
    seed: int = 0

    def __post_init__(self) -> None:
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


def _hidden(model, ids, mask, layers: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Hidden states after each block (``layers``: which; default all), ``[batch, seq, d_model]`` each.

    As Hugging Face returns them: the last block's entry is after the final norm. Only the last
    position is projected to the vocabulary (the logits are not used)."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), output_hidden_states=True,
                logits_to_keep=1)
    states = out.hidden_states[1:]
    return list(states) if layers is None else [states[l] for l in layers]


@dataclass
class RestoreResult:
    model: PeftModel
    stats: dict


def restore(
    finetuned: LoadedModel, layer_map: LayerMap, harmful: PromptSet, retain: PromptSet,
    config: RestoreConfig = RestoreConfig(), *, base: LoadedModel | None = None,
    layers: Sequence[int] | None = None, alignment: Sequence[int] | None = None, chat: ChatFormat = ChatFormat(),
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
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tok = finetuned.tokenizer
    encode = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    students = [encode(chat.render(tok, q)) for q in harmful.instructions]
    teacher_chat = ChatFormat(chat.system_prompt, chat.user_suffix + config.reminder)
    teachers = students if config.teacher == "base" else [encode(teacher_chat.render(tok, q)) for q in harmful.instructions]
    retains = [encode(chat.render(tok, q) + (a or "")) for q, a in zip(retain.instructions, retain.answers)]

    lora = layer_map.to_lora_config()
    for name, values in (("layers", layers), ("alignment", alignment)):
        if values is not None and (not values or not all(0 <= l < layer_map.n_layers for l in values)):
            raise ConfigError(f"restore: {name} must be a non-empty list of layers in [0, {layer_map.n_layers})")
    if layers is not None:
        lora.layers_to_transform = sorted(set(layers))
    model = get_peft_model(finetuned.hf, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    align = sorted(set(alignment)) if alignment is not None else list(layer_map.alignment_layers)
    history = []
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(config.steps), desc="restore", disable=not progress):
        picks = rng.sample(range(len(students)), min(config.batch_size, len(students)))
        s_ids, s_mask = left_pad([students[i] for i in picks], tok.pad_token_id)
        t_ids, t_mask = left_pad([teachers[i] for i in picks], tok.pad_token_id)
        # index[row, student column] = teacher column of the partner token: [batch, s_width]
        index = torch.tensor([_teacher_index(students[i], teachers[i], s_ids.shape[1], t_ids.shape[1]) for i in picks])
        with torch.no_grad():
            if config.teacher == "base":
                target = _hidden(base.hf, t_ids, t_mask, align)
            else:
                with model.disable_adapter():
                    target = _hidden(model, t_ids, t_mask, align)
        target = [t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in target]
        student = _hidden(model, s_ids, s_mask, align)
        safety = sum(distance(s, t, s_mask, config.distance) for s, t in zip(student, target)) / len(align)

        picks = rng.sample(range(len(retains)), min(config.batch_size, len(retains)))
        r_ids, r_mask = left_pad([retains[i] for i in picks], tok.pad_token_id)
        with torch.no_grad(), model.disable_adapter():
            frozen = _hidden(model, r_ids, r_mask)
        kept = _hidden(model, r_ids, r_mask)
        retain_loss = sum(distance(s, t, r_mask, config.distance) for s, t in zip(kept, frozen)) / len(kept)

        w_safety, w_retain = schedule(step, config.steps)
        loss = w_safety * safety + w_retain * config.retain_scale * retain_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"restore: loss became {loss.item()} at step {step}")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step, "safety": safety.item(), "retain": retain_loss.item()})
    model.eval()
    stats = {
        "seconds": round(time.perf_counter() - start, 1), "steps": config.steps,
        "trainable_params": sum(p.numel() for p in params), "layers": sorted(lora.layers_to_transform),
        "alignment_layers": align, "config": asdict(config), "history": history,
    }
    return RestoreResult(model, stats)


def _teacher_index(student: list[int], teacher: list[int], s_width: int, t_width: int) -> list[int]:
    """Teacher column for every student column of left-padded batches (padding maps to padding)."""
    s_pad, t_pad = s_width - len(student), t_width - len(teacher)
    partners = align_positions(student, teacher)
    return [t_pad if col < s_pad else t_pad + partners[col - s_pad] for col in range(s_width)]


# ----------------------------------------------------------------------------- saving
BRIDGE_KEY_PART = "._original_component"


def save_adapter(model: PeftModel, folder: str | Path) -> Path:
    """Save the adapter in peft's format, loadable with ``PeftModel.from_pretrained`` on a plain HF model.

    A TransformerBridge booted on the peft model wraps its modules, and the saved keys then contain
    ``._original_component``; a plain model would load such an adapter as nothing, silently. The keys
    (and target module names) are written without it.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        weights = load_file(str(tmp / "adapter_model.safetensors"))
        cleaned = {key.replace(BRIDGE_KEY_PART, ""): value for key, value in weights.items()}
        save_file(cleaned, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted({m.replace(BRIDGE_KEY_PART, "") for m in config["target_modules"]})
        config_path.write_text(json.dumps(config, indent=2))
    return folder


def save_model(hf, tokenizer, folder: str | Path) -> Path:
    """Save a plain Hugging Face model and its tokenizer as one folder, atomically."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def save_merged(model: PeftModel, tokenizer, folder: str | Path) -> Path:
    """Merge the adapter into a copy of the weights and save a plain Hugging Face folder."""
    import copy

    return save_model(copy.deepcopy(model).merge_and_unload(), tokenizer, folder)
