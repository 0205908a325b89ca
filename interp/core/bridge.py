"""Running a model: the residual stream, interventions, and TransformerLens 4 bridges.

**The residual stream after block ``l``** is the output of decoder layer ``l``: before the final norm,
at every position. One definition serves every stage: capture reads it through the bridge hook
``blocks.{l}.hook_resid_post``; causal checks, steering and restoration read or change it with plain
forward hooks on the decoder layer (``block_outputs``, ``intervene``), on any Hugging Face causal LM,
with or without a bridge or peft adapters on it. A test checks that both read the same tensor.

The bridge (``boot_bridge``) wraps an already loaded HF model in place and switches it to eager
attention. Version workaround, checked by a test: TransformerLens 4.3's attention bridges look for the
KV cache under ``past_key_values`` (or ``layer_past``) while transformers 5.2x passes it as ``cache``;
without ``patch_bridge_kv_cache`` every cached decoding step on a booted model attends to itself alone.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from transformers import AutoTokenizer

from ..errors import UnknownHookError

HOOK_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# Hook points the plain HF model gives directly: a decoder layer's output and its two components' outputs
# (what the attention and the MLP add to the residual stream: ``self_attn`` after ``o_proj``, ``mlp``
# after ``down_proj``; a test checks they equal the bridge's ``hook_attn_out`` / ``hook_mlp_out``).
COMPONENT_MODULES = {"attn_out": "self_attn", "mlp_out": "mlp"}
PLAIN_KINDS = ("resid_post", *COMPONENT_MODULES)
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_([a-z_]+)$")
BRIDGE_KEY_PART = "._original_component"  # what a booted bridge inserts into module and weight names

# An intervention on the residual stream after one block: ``[batch, seq, d_model] -> same``.
Edit = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- hook names
def resid_hook(layer: int) -> str:
    """The bridge hook of the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def hook_names(n_layers: int, kind: str = "resid_post", layers: Sequence[int] | None = None) -> tuple[str, ...]:
    """Bridge hook names for one kind of hook point at the given layers (default: all)."""
    if kind not in HOOK_KINDS:
        raise UnknownHookError(f"unknown hook kind {kind!r}; choose from {', '.join(HOOK_KINDS)}")
    layers = range(n_layers) if layers is None else layers
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise UnknownHookError(f"layer {layer} out of range for a model with {n_layers} layers")
    return tuple(f"blocks.{layer}.hook_{kind}" for layer in layers)


def parse_hook(name: str) -> tuple[int, str] | None:
    """``(layer, kind)`` of a block hook name such as ``blocks.3.hook_attn_out``; ``None`` otherwise."""
    match = _HOOK.match(name)
    return (int(match.group(1)), match.group(2)) if match and match.group(2) in HOOK_KINDS else None


# ----------------------------------------------------------------------------- plain forward hooks
class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything it needs has been read."""


def decoder_layers(hf_model) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (also under peft or a booted bridge)."""
    return _decoder(hf_model).layers


def _decoder(hf_model) -> torch.nn.Module:
    """The module that holds the decoder blocks (``layers``) and the final norm (``norm``)."""
    model = hf_model
    for _ in range(4):  # PeftModel -> LoraModel -> CausalLM -> base model
        if isinstance(getattr(model, "layers", None), torch.nn.ModuleList):
            return model
        model = getattr(model, "model", None) or getattr(model, "base_model", None)
        if model is None:
            break
    raise UnknownHookError(f"cannot find the decoder layers of {type(hf_model).__name__}")


def unembed(hf_model, resid: torch.Tensor) -> torch.Tensor:
    """Next-token logits from the residual stream after the last block: the final norm, then the
    unembedding (``[..., d_model]`` -> ``[..., d_vocab]``, float32); what the model's own forward computes
    there. Gradients flow when called outside ``torch.no_grad``."""
    return hf_model.get_output_embeddings()(_decoder(hf_model).norm(resid)).float()


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def intervene(hf_model, edits: Mapping[int, Edit]) -> Iterator[None]:
    """Inside the block, every forward of ``hf_model`` (including ``generate``) replaces the residual
    stream after block ``l`` by ``edits[l](residual)``."""
    layers = decoder_layers(hf_model)
    handles = []
    for layer, edit in edits.items():

        def hook(module, args, output, edit=edit):
            return _with_hidden(output, edit(_hidden(output)))

        handles.append(layers[layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def component(hf_model, layer: int, kind: str) -> torch.nn.Module:
    """The module of decoder layer ``layer`` whose output is ``kind`` (``attn_out`` or ``mlp_out``)."""
    if kind not in COMPONENT_MODULES:
        raise UnknownHookError(f"no component {kind!r}; choose from {', '.join(COMPONENT_MODULES)}")
    return getattr(decoder_layers(hf_model)[layer], COMPONENT_MODULES[kind])


def block_outputs(
    hf_model, inputs: Mapping[str, torch.Tensor], layers: Sequence[int], edits: Mapping[int, Edit] | None = None
) -> list[torch.Tensor]:
    """The residual stream after each block in ``layers``, ``[batch, seq, d_model]`` each, in that order.

    The forward pass stops after the deepest block asked for (no final norm, no unembedding). ``inputs``
    may carry a KV cache (``cache``, ``use_cache=True``): the outputs then cover the new tokens only.
    Gradients flow when called outside ``torch.no_grad``. ``edits`` are applied first (``intervene``).
    """
    return read_points(hf_model, inputs, [(layer, "resid_post") for layer in layers], edits)


def read_points(
    hf_model,
    inputs: Mapping[str, torch.Tensor],
    points: Sequence[tuple[int, str]],
    edits: Mapping[int, Edit] | None = None,
) -> list[torch.Tensor]:
    """``block_outputs`` for any ``(layer, kind)`` of ``PLAIN_KINDS``: the residual stream after the block
    (``resid_post``) or what its attention (``attn_out``) or MLP (``mlp_out``) adds to it, each
    ``[batch, seq, d_model]``, in the order asked. The forward stops after the deepest block named."""
    store: dict[tuple[int, str], torch.Tensor] = {}
    deepest = max(layer for layer, _ in points)
    blocks = decoder_layers(hf_model)

    def keep(point: tuple[int, str]):
        def hook(module, args, output):
            store[point] = _hidden(output)

        return hook

    def stop(module, args, output):
        raise StopForward

    bad = [kind for _, kind in points if kind not in PLAIN_KINDS]
    if bad:
        raise UnknownHookError(f"the plain model reads {', '.join(PLAIN_KINDS)}, not {bad[0]!r}")
    handles = []
    with intervene(hf_model, edits or {}):  # its hooks first: a block's output is read after its edit
        for layer, kind in sorted(set(points)):
            module = blocks[layer] if kind == "resid_post" else component(hf_model, layer, kind)
            handles.append(module.register_forward_hook(keep((layer, kind))))
        handles.append(blocks[deepest].register_forward_hook(stop))  # registered last: after the reads
        try:
            hf_model(**{"use_cache": False, **inputs})
        except StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
    return [store[point] for point in points]


@contextmanager
def replace_output(hf_model, layer: int, kind: str, value: torch.Tensor) -> Iterator[None]:
    """Inside the block, the ``kind`` component (``attn_out`` / ``mlp_out``) of block ``layer`` outputs
    ``value`` (``[batch, seq, d_model]``, e.g. the same component of another model on the same batch)."""

    def hook(module, args, output):
        return _with_hidden(output, value.to(_hidden(output).dtype))

    handle = component(hf_model, layer, kind).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Skip(torch.nn.Module):
    """Stands in for a decoder layer that need not run: passes the residual stream through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def record_block_inputs(hf_model, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, each forward of ``hf_model`` stores the residual stream entering each block in
    ``layers`` (the output of the block before it) in the dict it yields."""
    blocks, store, handles = decoder_layers(hf_model), {}, []
    for layer in sorted(set(layers)):

        def keep(module, args, kwargs, layer=layer):
            store[layer] = args[0] if args else kwargs["hidden_states"]

        handles.append(blocks[layer].register_forward_pre_hook(keep, with_kwargs=True))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class _Emit(torch.nn.Module):
    """Stands in for a decoder layer whose output is known: returns it."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states, *args, **kwargs):
        return self.hidden


@contextmanager
def resume_after(hf_model, layer: int, hidden: torch.Tensor) -> Iterator[None]:
    """Inside the block, a forward of ``hf_model`` does not run blocks ``0 .. layer``: the residual stream
    after block ``layer`` is ``hidden`` (``[batch, seq, d_model]``, e.g. a block output read earlier and
    edited), and the forward goes on from block ``layer + 1`` (the final norm and unembedding when
    ``layer`` is the last block). The same batch must be passed, so masks and positions match."""
    blocks = decoder_layers(hf_model)
    replaced = [blocks[i] for i in range(layer + 1)]
    for i in range(layer):
        blocks[i] = _Skip()
    blocks[layer] = _Emit(hidden)
    try:
        yield
    finally:
        for i, block in enumerate(replaced):
            blocks[i] = block


def resume_at(hf_model, layer: int, hidden: torch.Tensor):
    """``resume_after(hf_model, layer - 1, hidden)``: ``hidden`` is the residual stream entering block
    ``layer >= 1`` (e.g. from ``record_block_inputs`` on a model with the same weights below ``layer``)."""
    if layer < 1:
        raise ValueError(f"resume_at needs a layer >= 1, got {layer}")
    return resume_after(hf_model, layer - 1, hidden)


@torch.no_grad()
def last_logits(hf_model, inputs: Mapping[str, torch.Tensor], edits: Mapping[int, Edit] | None = None) -> torch.Tensor:
    """Next-token logits at the last position, ``[batch, d_vocab]`` (float32); only that position is
    projected to the vocabulary. ``edits`` change the residual stream on the way (``intervene``)."""
    with intervene(hf_model, edits or {}):
        logits = hf_model(**{"use_cache": False, **inputs}, logits_to_keep=1).logits[:, -1]
    return logits.float()


# ----------------------------------------------------------------------------- edits
def add_vector(vector: torch.Tensor) -> Edit:
    """``x + v`` at every position."""
    return lambda x: x + vector.to(device=x.device, dtype=x.dtype)


def ablate_direction(unit: torch.Tensor) -> Edit:
    """``x - (x . u) u`` at every position (``u`` a unit vector)."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        u = unit.to(device=x.device, dtype=x.dtype)
        return x - (x @ u)[..., None] * u

    return edit


# ----------------------------------------------------------------------------- the bridge
def patch_bridge_kv_cache() -> None:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    if getattr(original, "_interp_patched", False):
        return

    def _update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return original(self, k, v, **kwargs)

    _update_kv_cache._interp_patched = True
    AttentionBridge._update_kv_cache = _update_kv_cache


def boot_bridge(hf_model, tokenizer, name: str):
    """Boot a ``TransformerBridge`` on an already loaded HF model.

    The bridge wraps ``hf_model``'s submodules in place and switches it to eager attention. It may
    reload the tokenizer by its ``name_or_path``, so it gets a copy saved to disk and reloaded.
    """
    from transformer_lens.model_bridge import TransformerBridge

    patch_bridge_kv_cache()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        bridge_tokenizer = AutoTokenizer.from_pretrained(tmp)
        bridge = TransformerBridge.boot_transformers(
            name,
            hf_model=hf_model,
            tokenizer=bridge_tokenizer,
            device=str(next(hf_model.parameters()).device),
            dtype=next(hf_model.parameters()).dtype,
        )
    bridge.eval()
    return bridge
