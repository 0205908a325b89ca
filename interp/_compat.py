"""Workarounds for version mismatches between the pinned libraries, each checked by a test.

TransformerLens 4.3's attention bridges look for the KV cache under ``past_key_values`` (or
``layer_past``); transformers 5.2x passes it as ``cache``. Without a fix every cached decoding step on a
booted model attends to itself alone, so ``model.generate`` (and ``bridge.generate``) silently produce
wrong text after a bridge has been booted. ``tests/test_analysis.py`` compares cached generation before
and after booting.
"""
from __future__ import annotations


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
