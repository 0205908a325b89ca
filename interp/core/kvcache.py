"""Key/value caches for batched forward passes: preallocated, and starting from a shared prefix.

Every prompt of a suite starts with the same tokens (the chat template's system turn: 24 of about 42
tokens for SmolLM2). ``shared_prefix`` runs them once; ``prefixed_batch`` lays rows out as
``[shared prefix][left padding][rest of the prompt]`` with the padding masked out and positions counting
real tokens only, and ``kv_cache`` gives every row a copy of the prefix's keys and values. Attention
over masked padding adds nothing, and rotary positions depend only on the position ids, so each row
computes what it would on its own (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

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
    """The tokens every sequence starts with, and their keys and values ``[1, heads, length, head_dim]``
    per layer (``None`` when there is no shared prefix)."""

    length: int = 0
    states: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def kv_cache(capacity: int, prefix: SharedPrefix | None = None, batch: int = 1) -> DynamicCache:
    """A ``DynamicCache`` of ``PreallocatedLayer``s; with a ``prefix`` each of ``batch`` rows starts with it
    (a prefix whose keys already have ``batch`` rows gives each row its own)."""
    cache = DynamicCache()
    if prefix is None or prefix.states is None:
        Cache.__init__(cache, layer_class_to_replicate=partial(PreallocatedLayer, capacity))
        return cache
    layers = []
    for keys, values in prefix.states:
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


@torch.no_grad()
def shared_prefix(hf_model, seqs: Sequence[Sequence[int]]) -> SharedPrefix:
    """The longest token prefix of all ``seqs`` (``shared_length``) run through ``hf_model`` once.
    Residual-stream edits active around the call (``intervene``) apply to it too."""
    length = shared_length(seqs)
    if length < 1:
        return SharedPrefix()
    first = seqs[0]
    cache = kv_cache(length)
    device = next(hf_model.parameters()).device
    hf_model(input_ids=torch.tensor([list(first[:length])], device=device), cache=cache, use_cache=True)
    return SharedPrefix(length, [(layer.keys, layer.values) for layer in cache.layers])


def prefixed_batch(
    seqs: Sequence[Sequence[int]], prefix_length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, positions)`` for rows ``[prefix][padding][rest]`` with the prefix already cached:
    ``ids`` and ``positions`` ``[batch, rest]`` cover the part after the prefix, ``mask`` ``[batch, prefix
    + rest]`` the whole row (what the attention sees)."""
    ids, rest_mask = left_pad([seq[prefix_length:] for seq in seqs], pad_id)
    mask = torch.cat([rest_mask.new_ones(len(seqs), prefix_length), rest_mask], dim=1)
    return ids, mask, position_ids(mask)[:, prefix_length:]
