"""Activation capture through TransformerLens bridge hooks, with bounded memory and a disk cache.

Each batch runs once through the bridge with one hook per requested hook point; when every hook is a
block's ``hook_resid_post``, ``hook_attn_out`` or ``hook_mlp_out`` the plain HF model runs instead
(``read_points``: the same tensors, without the bridge's wrapper modules and eager attention), with the
prompts' shared prefix (the chat template's system turn) run once and its keys and values shared
(``interp.core.kvcache``). A hook keeps only
the requested token positions, so memory grows with prompts x hooks x positions x d_model and never
with sequence length. The forward pass stops after the last block that a hook asks for.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import distributed
from ..core.bridge import PLAIN_KINDS, StopForward, hook_names, parse_hook, read_points, resid_hook
from ..core.chat import ChatFormat, batches, tokenize
from ..core.kvcache import SharedPrefix, after_prefix, shared_prefix
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..errors import ConfigError, NonFiniteActivationError, PositionOutOfRangeError, UnknownHookError
from ..io.atomic import atomic_dir
from ..io.cache import cache_root, intact_entry
from ..io.hashing import stable_hash

FORMAT_VERSION = 1
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


# ----------------------------------------------------------------------------- positions
@dataclass(frozen=True)
class Positions:
    """Which token positions to keep.

    ``offsets`` are negative indices from the end of the prompt (``-1`` is the last prompt token,
    which with a chat template is the end of the ``assistant`` header). ``instruction_mean=True``
    instead averages over the tokens of the user's instruction.
    """

    offsets: tuple[int, ...] = (-1,)
    instruction_mean: bool = False

    def __post_init__(self) -> None:
        if not self.instruction_mean:
            if not self.offsets:
                raise ConfigError("Positions needs at least one offset")
            bad = [o for o in self.offsets if not isinstance(o, int) or o >= 0]
            if bad:
                raise ConfigError(f"position offsets must be negative integers (from the end), got {bad}")

    @classmethod
    def last(cls) -> Positions:
        return cls((-1,))

    @classmethod
    def last_k(cls, k: int) -> Positions:
        """The last ``k`` prompt tokens: the post-instruction positions of Arditi et al."""
        if k < 1:
            raise ConfigError(f"last_k needs k >= 1, got {k}")
        return cls(tuple(range(-k, 0)))

    @classmethod
    def mean_over_instruction(cls) -> Positions:
        return cls((), instruction_mean=True)

    @classmethod
    def parse(cls, text: str) -> Positions:
        """``last``, ``last:5``, ``instruction_mean`` or a comma list of negative offsets (``-5,-1``)."""
        text = text.strip()
        if text == "last":
            return cls.last()
        if text == "instruction_mean":
            return cls.mean_over_instruction()
        try:
            if text.startswith("last:"):
                return cls.last_k(int(text.split(":", 1)[1]))
            return cls(tuple(int(part) for part in text.split(",")))
        except ValueError as error:
            raise ConfigError(f"cannot read positions {text!r}: use last, last:K, instruction_mean or -5,-1") from error

    @property
    def spec(self) -> str:
        return "instruction_mean" if self.instruction_mean else ",".join(str(o) for o in self.offsets)

    @property
    def labels(self) -> list[str]:
        return ["instruction_mean"] if self.instruction_mean else [str(o) for o in self.offsets]


# ----------------------------------------------------------------------------- results
@dataclass
class Activations:
    """Captured activations ``tensor[prompt, hook, position, d_model]`` and what they came from."""

    tensor: torch.Tensor
    hook_names: list[str]
    positions: list[str]
    model_name: str
    model_fingerprint: str
    prompt_set: str
    prompt_hash: str
    labels: list[int | None]
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = (len(self.labels), len(self.hook_names), len(self.positions))
        if tuple(self.tensor.shape[:3]) != expected:
            raise ConfigError(f"activation tensor has shape {tuple(self.tensor.shape)}, metadata says {expected}")

    @property
    def layers(self) -> list[int | None]:
        """The block index of each hook (``None`` for hooks outside the blocks)."""
        return [int(m.group(1)) if (m := _BLOCK.match(h)) else None for h in self.hook_names]

    def at(self, hook: str | int, position: int | str = -1) -> torch.Tensor:
        """``[prompt, d_model]`` at one hook (name, or block index) and one position (label or index)."""
        h = self.hook_index(hook)
        p = self.positions.index(position) if isinstance(position, str) else position
        return self.tensor[:, h, p]

    def hook_index(self, hook: str | int) -> int:
        if isinstance(hook, int):
            if hook not in self.layers:
                raise UnknownHookError(f"no captured hook in block {hook}; captured: {self.hook_names}")
            return self.layers.index(hook)
        if hook not in self.hook_names:
            raise UnknownHookError(f"hook {hook!r} was not captured; captured: {self.hook_names}")
        return self.hook_names.index(hook)

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "hook_names": self.hook_names,
            "positions": self.positions,
            "model_name": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "prompt_set": self.prompt_set,
            "prompt_hash": self.prompt_hash,
            "labels": self.labels,
            "shape": list(self.tensor.shape),
            "extra": self.extra,
        }

    def save(self, folder: str | Path, checksums: bool = False) -> Path:
        """Write ``activations.safetensors`` and ``meta.json`` into ``folder``, atomically (``checksums``:
        as a self-checking cache entry, ``interp.io``)."""
        folder = Path(folder)
        with atomic_dir(folder, marker="meta.json", checksums=checksums) as tmp:
            save_file({"activations": self.tensor.contiguous()}, str(tmp / "activations.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(self.metadata(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Activations:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{folder}: activation format {meta.get('format_version')} is not {FORMAT_VERSION}")
        try:
            tensor = load_file(str(folder / "activations.safetensors"))["activations"]
        except Exception as error:  # safetensors raises its own error type for a damaged file
            raise ConfigError(f"{folder}: activations.safetensors cannot be read ({error})") from error
        if not torch.isfinite(tensor).all():
            raise NonFiniteActivationError(f"{folder}: the saved activations hold NaN or infinite values")
        keys = ("hook_names", "positions", "model_name", "model_fingerprint", "prompt_set", "prompt_hash", "labels")
        return cls(tensor=tensor, extra=meta.get("extra", {}), **{k: meta[k] for k in keys})


# ----------------------------------------------------------------------------- capture
@dataclass(frozen=True)
class CaptureConfig:
    """What to capture. ``hooks=None`` means the residual stream after every block."""

    hooks: tuple[str, ...] | None = None
    positions: Positions = Positions.last()
    batch_size: int = 16
    chat: ChatFormat = ChatFormat()

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.hooks is not None and len(self.hooks) == 0:
            raise ConfigError("hooks is an empty list; pass None for every block's residual stream")


_DEFAULT_CACHE = object()


def _stop(activation: torch.Tensor, hook) -> None:
    raise StopForward


def _check_hooks(bridge, hooks: Sequence[str]) -> None:
    known = set(bridge.hook_dict)
    for name in hooks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownHookError(f"the model has no hook named {name!r}{hint}")


def _instruction_spans(tokenizer, texts: list[str], instructions: Sequence[str]) -> list[tuple[int, int]]:
    """Token index range ``[start, end)`` of each instruction inside its (unpadded) rendered prompt."""
    spans = []
    for text, instruction in zip(texts, instructions):
        start_char = text.rfind(instruction)
        if start_char < 0:
            raise PositionOutOfRangeError(f"instruction not found in its rendered prompt: {instruction[:60]!r}")
        end_char = start_char + len(instruction)
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        inside = [i for i, (a, b) in enumerate(offsets) if b > start_char and a < end_char]
        spans.append((inside[0], inside[-1] + 1))
    return spans


def capture(
    model: LoadedModel,
    prompts: PromptSet,
    config: CaptureConfig = CaptureConfig(),
    *,
    cache_dir: str | Path | None | object = _DEFAULT_CACHE,
    progress: bool = True,
) -> Activations:
    """Run ``model`` over ``prompts`` and return the activations at the configured hooks and positions.

    Results are cached under ``cache_dir`` (default ``$INTERP_CACHE/activations``; ``None`` turns the
    cache off) by a key over the model's weights fingerprint, the prompts, hooks, positions and chat
    format: a repeated request loads from disk without running the model.
    """
    prompts.require_nonempty()
    hooks = list(config.hooks or hook_names(model.n_layers))
    key = stable_hash(
        {
            "model": model.fingerprint,
            "prompts": prompts.hash,
            "hooks": hooks,
            "positions": config.positions.spec,
            "chat": config.chat.to_dict(),
            "version": FORMAT_VERSION,
        }
    )
    if cache_dir is _DEFAULT_CACHE:
        cache_dir = cache_root() / "activations"
    safe_name = re.sub(r"[^A-Za-z0-9_.+-]", "_", prompts.name)[:80]  # a name is never a path
    cached = Path(cache_dir) / f"{safe_name}-{key}" if cache_dir is not None else None
    if cached is not None and intact_entry(cached, "meta.json"):
        return Activations.load(cached)

    blocks = [int(m.group(1)) if (m := _BLOCK.match(h)) else None for h in hooks]
    # Block outputs and component outputs only: the plain HF model gives the same tensors, no bridge.
    points = [parse_hook(h) for h in hooks]
    plain = all(point is not None and point[1] in PLAIN_KINDS for point in points)
    if plain:
        outside = [h for h, b in zip(hooks, blocks) if not 0 <= b < model.n_layers]
        if outside:
            raise UnknownHookError(f"hooks outside the model's {model.n_layers} blocks: {outside}")
    else:
        bridge = model.bridge
        _check_hooks(bridge, hooks)
    tokenizer = model.tokenizer
    texts = config.chat.render_all(tokenizer, prompts.instructions)
    token_ids = [tokenize(tokenizer, t) for t in texts]
    lengths = [len(ids) for ids in token_ids]
    positions = config.positions
    if positions.instruction_mean:
        spans = _instruction_spans(tokenizer, texts, prompts.instructions)
    else:
        deepest = -min(positions.offsets)
        for i, length in enumerate(lengths):
            if deepest > length:
                raise PositionOutOfRangeError(
                    f"position {-deepest} is outside prompt {i}, which has only {length} tokens"
                )
    # Stop right after the deepest block asked for: skips later blocks, the final norm and the unembed.
    stop_hook = None if None in blocks else resid_hook(max(blocks))

    n_pos = 1 if positions.instruction_mean else len(positions.offsets)
    out = torch.full((len(texts), len(hooks), n_pos, model.d_model), float("nan"))
    fired: set[int] = set()
    device = model.device
    prefix = SharedPrefix()
    if plain:  # the tokens every prompt starts with (the system turn) run once, up to the first captured one
        first_read = [spans[i][0] + 1 for i in range(len(texts))] if positions.instruction_mean else None
        ends = first_read or [length - deepest + 1 for length in lengths]
        prefix = shared_prefix(model.hf, [ids[:end] for ids, end in zip(token_ids, ends)])
    todo = list(batches(token_ids, config.batch_size, tokenizer.pad_token_id))  # similar lengths share a batch
    todo = distributed.split(todo)  # this process's batches when several run (interp.distributed)
    for chunk in tqdm(todo, desc=f"capture {model.name} / {prompts.name}", disable=not progress):
        batch = chunk.index
        if plain:  # rows [shared prefix][padding][rest]; activations cover the rest
            inputs = after_prefix([token_ids[i] for i in batch], prefix, tokenizer.pad_token_id, device)
        width = (inputs["input_ids"] if plain else chunk.ids).shape[1]  # token j of row i sits at width - length + j
        weights = None
        if positions.instruction_mean:
            weights = torch.zeros(len(batch), width)
            for row, i in enumerate(batch):
                start, end = spans[i]
                shift = width - lengths[i]
                weights[row, shift + start : shift + end] = 1.0 / (end - start)
            weights = weights.to(device)

        def keep(slot: int, batch: list[int], weights: torch.Tensor | None):
            def hook(activation: torch.Tensor, hook) -> None:  # activation: [batch, seq, d_model]
                if positions.instruction_mean:
                    picked = torch.einsum("bs,bsd->bd", weights, activation.float())[:, None]
                else:
                    picked = activation[:, list(positions.offsets)].float()  # [batch, n_pos, d_model]
                out[batch, slot] = picked.detach().cpu()
                fired.add(slot)

            return hook

        if plain:
            with torch.no_grad():
                outputs = read_points(model.hf, inputs, points)
            for slot, resid in enumerate(outputs):
                keep(slot, batch, weights)(resid, None)
            continue
        fwd_hooks = [(h, keep(s, batch, weights)) for s, h in enumerate(hooks)]
        if stop_hook is not None:
            fwd_hooks.append((stop_hook, _stop))  # added last, so it runs after the hooks above
        try:
            with torch.no_grad():
                bridge.run_with_hooks(
                    chunk.ids.to(device),
                    fwd_hooks=fwd_hooks,
                    attention_mask=chunk.mask.to(device),
                    position_ids=chunk.positions.to(device),
                )
        except StopForward:
            pass
    if distributed.launched():  # every process's rows, in place
        mine = [i for chunk in todo for i in chunk.index]
        for part in distributed.collect([(mine, out[mine], fired)]):  # one entry per process
            index, rows, slots = part[0]
            out[index] = rows
            fired |= slots
    silent = [h for s, h in enumerate(hooks) if s not in fired]
    if silent:
        raise UnknownHookError(f"hooks never fired during the forward pass: {silent}")
    finite = torch.isfinite(out).reshape(len(texts), len(hooks), -1).all(-1).all(0)
    if not finite.all():
        bad = [h for h, ok in zip(hooks, finite.tolist()) if not ok]
        raise NonFiniteActivationError(f"{model.name} produced NaN or infinite activations at {bad}")
    result = Activations(
        tensor=out,
        hook_names=hooks,
        positions=positions.labels,
        model_name=model.name,
        model_fingerprint=model.fingerprint,
        prompt_set=prompts.name,
        prompt_hash=prompts.hash,
        labels=list(prompts.labels),
        extra={"chat": config.chat.to_dict(), "token_lengths": lengths},
    )
    if cached is not None:
        result.save(cached, checksums=True)
    return result
