"""Key/value caches for batched forward passes: preallocated, and starting from a shared prefix.

Every prompt of a suite starts with the same tokens (the chat template's system turn: 24 of about 42
tokens for SmolLM2). One pair of helpers runs them once and the rest of every prompt on top of them:

* ``run_prefix`` runs the prefix through a model once and keeps every layer's keys and values, and any
  block or component outputs asked for; it can start at a later block from another run of the prefix
  (the blocks below reused), and edits active around it apply (``shared_prefix``: the longest prefix of
  a set of prompts, keys and values only);
* ``after_prefix`` gives the forward kwargs of a batch on top of a prefix: rows ``[shared prefix][left
  padding][rest of the prompt]`` (``prefixed_batch``) with the padding masked out and positions counting
  real tokens only, and a cache (``kv_cache``) whose every row starts with the prefix's keys and values.

Attention over masked padding adds nothing, and rotary positions depend only on the position ids, so
each row computes what a plain forward of the whole prompt would, up to float rounding (tests check the
capture, the causal sweep, component patching and restoration against plain forwards).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from .bridge import decoder_layers, read_points, resume_at
from .chat import left_pad, position_ids


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` that writes into a buffer of ``capacity`` positions per row (no copy per step)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            batch, heads, length, dim = key_states.shape
            shape = (batch, heads, max(self.capacity, length), dim)
            self._k, self._v, self._length = key_states.new_empty(shape), value_states.new_empty(shape), 0
        end = self._length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            raise RuntimeError(f"KV cache full: {end} > {self._k.shape[-2]} positions")
        self._k[:, :, self._length : end] = key_states
        self._v[:, :, self._length : end] = value_states
        self._length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self._length], self._v[:, :, : self._length]


@dataclass
class SharedPrefix:
    """The ``length`` tokens every sequence starts with, run once through one model (``run_prefix``):
    their keys and values ``[rows, heads, length, head_dim]`` per layer (``None`` when there is no shared
    prefix), and the outputs read on the way, ``[rows, length, d_model]`` by ``(layer, kind)`` (the points
    of ``interp.core.bridge.read_points``; ``(l, "resid_post")`` is the residual stream after block ``l``)."""

    length: int = 0
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    outputs: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)


def kv_cache(capacity: int, prefix: SharedPrefix | None = None, batch: int = 1) -> DynamicCache:
    """A ``DynamicCache`` of ``PreallocatedLayer``s; with a ``prefix`` each of ``batch`` rows starts with it
    (a prefix whose keys already have ``batch`` rows gives each row its own)."""
    cache = DynamicCache()
    if prefix is None or prefix.kv is None:
        Cache.__init__(cache, layer_class_to_replicate=partial(PreallocatedLayer, capacity))
        return cache
    layers = []
    for keys, values in prefix.kv:
        layer = PreallocatedLayer(capacity)
        if keys.shape[0] != batch:
            keys, values = keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)
        layer.update(keys, values)
        layers.append(layer)
    Cache.__init__(cache, layers=layers)
    return cache


def shared_length(seqs: Sequence[Sequence[int]]) -> int:
    """The length of the longest token prefix all ``seqs`` share, leaving at least one token of each."""
    if not seqs:
        return 0
    first, length = seqs[0], min(len(s) for s in seqs) - 1
    for seq in seqs[1:]:
        length = next((i for i in range(length) if seq[i] != first[i]), length)
    return max(length, 0)


def run_prefix(
    hf_model,
    ids: Sequence[int],
    points: Sequence[tuple[int, str]] = (),
    *,
    start: int = 0,
    below: SharedPrefix | None = None,
    entering: torch.Tensor | None = None,
    rows: int = 1,
) -> SharedPrefix:
    """``ids`` (the ``P`` tokens every row starts with) through ``hf_model`` once: every layer's keys and
    values ``[rows, heads, P, head_dim]`` and the outputs at ``points`` (``(layer, kind)``, as
    ``read_points``), ``[rows, P, d_model]`` each. The forward stops after the last block.

    With ``start > 0`` only blocks ``start ..`` run: ``entering`` ``[rows, P, d_model]`` is the residual
    stream entering block ``start`` (default: ``below``'s ``(start - 1, "resid_post")``), and ``below``, a
    run of the same ``ids``, gives the keys, values and outputs of the blocks under ``start``. That is
    exact when those blocks would compute them again: the same weights below ``start`` (adapters that
    start there), or a change that acts after block ``start - 1`` (an edited ``entering``: the blocks
    below saw the unedited stream). ``start`` may be the number of blocks: then nothing runs.

    Edits active around the call (``intervene``, ``replace_output``) apply to the blocks that run;
    gradients flow when called outside ``torch.no_grad``. ``rows`` runs the prefix as that many identical
    rows (for edits that differ per row). Empty ``ids`` give the empty prefix (no forward)."""
    if not ids:
        return SharedPrefix()
    n_layers = len(decoder_layers(hf_model))
    outputs = {point: below.outputs[point] for point in points if point[0] < start}
    ran = [point for point in points if point[0] >= start]
    cache = kv_cache(len(ids))
    if start < n_layers:
        device = next(hf_model.parameters()).device
        inputs = {"input_ids": torch.tensor([list(ids)] * rows, device=device), "cache": cache, "use_cache": True}
        if start > 0 and entering is None:
            entering = below.outputs[start - 1, "resid_post"]
        with resume_at(hf_model, start, entering) if start > 0 else nullcontext():
            # up to the last block, which every layer's keys and values need
            outputs.update(zip(ran, read_points(hf_model, inputs, [*ran, (n_layers - 1, "resid_post")])))
    kv = [below.kv[j] if j < start else (cache.layers[j].keys, cache.layers[j].values) for j in range(n_layers)]
    return SharedPrefix(len(ids), kv, outputs)


@torch.no_grad()
def shared_prefix(hf_model, seqs: Sequence[Sequence[int]]) -> SharedPrefix:
    """The longest token prefix of all ``seqs`` (``shared_length``) through ``hf_model`` once: its keys
    and values (``run_prefix``). Residual-stream edits active around the call (``intervene``) apply."""
    return run_prefix(hf_model, seqs[0][: shared_length(seqs)] if seqs else [])


def after_prefix(seqs: Sequence[Sequence[int]], prefix: SharedPrefix, pad_id: int, device) -> dict:
    """Forward kwargs, on ``device``, for ``seqs`` on top of their shared ``prefix`` (``run_prefix``): rows
    ``[prefix][padding][rest]`` (``prefixed_batch``), ``input_ids`` and ``position_ids`` ``[batch, rest]``,
    ``attention_mask`` ``[batch, prefix.length + rest]`` (its columns from ``prefix.length`` on mask the
    rest), and a ``cache`` whose every row starts with the prefix's keys and values (gradients flow into
    them). A forward fills the cache: one forward per call. The forward's outputs cover the rest."""
    ids, mask, positions = prefixed_batch(seqs, prefix.length, pad_id)
    tensors = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    cache = kv_cache(mask.shape[1], prefix, len(seqs))
    return {k: v.to(device) for k, v in tensors.items()} | {"cache": cache, "use_cache": True}


def prefixed_batch(
    seqs: Sequence[Sequence[int]], prefix_length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, positions)`` for rows ``[prefix][padding][rest]`` with the prefix already cached:
    ``ids`` and ``positions`` ``[batch, rest]`` cover the part after the prefix, ``mask`` ``[batch, prefix
    + rest]`` the whole row (what the attention sees)."""
    ids, rest_mask = left_pad([seq[prefix_length:] for seq in seqs], pad_id)
    mask = torch.cat([rest_mask.new_ones(len(seqs), prefix_length), rest_mask], dim=1)
    return ids, mask, position_ids(mask)[:, prefix_length:]
