"""Which component of which block did the suppressing: the attention or the MLP.

Block ``l`` adds two things to the residual stream, its attention output ``a_l`` and its MLP output
``m_l`` (``resid_post_l = resid_pre_l + a_l + m_l``). Unlike the residual stream, which carries
everything written below it, these are what block ``l`` itself writes. For a component ``c`` of
block ``l`` (``attn`` or ``mlp``), at the last prompt token, with ``u_l`` the base model's unit refusal
direction at layer ``l`` (difference in means of the residual stream, harmful minus harmless):

    written_c(model) = mean_harmful(c . u_l) - mean_harmless(c . u_l)     how much refusal c writes
    lost_c  = (written_c(base) - written_c(ft)) / max_l |separation_base_l|
    patch_c = score(ft with c replaced by the base's c, same prompts) - score(ft)
    amp_c   = |task_c(ft)| / |task_c(base)| - 1       task_c: mean task minus mean harmless output of c
    score_c = w_suppression * unit(lost+)_c + w_causal * unit(patch+)_c + w_amplification * unit(amp+)_c

``separation_base_l`` is the residual stream's separation along ``u_l`` (``compare``), so ``lost``
is on the same scale as the layer score's; ``score`` is the refusal log-odds of the first answer token
averaged over harmful prompts (``interp.core.judge.refusal_log_odds``); ``x+ = max(0, x)`` and
``unit`` divides by the maximum over every (component, layer) pair, so attention and MLP compete on
one scale. The weights are the layer score's (``interp.measures.layer_map``). Patching replaces the
component's output at every position, in one block at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.bridge import hook_names, last_logits, read_points, replace_output, resume_after
from ..core.chat import ChatFormat, batches
from ..core.judge import refusal_log_odds
from ..core.kvcache import SharedPrefix, after_prefix, run_prefix, shared_length
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..distributed import split, sum_array
from ..errors import ConfigError, LayerMapError
from .directions import as_layers
from .layer_map import DEFAULT_WEIGHTS, KNOWN_MODULES, LayerMap

COMPONENTS = ("attn", "mlp")
HOOK_KIND = {"attn": "attn_out", "mlp": "mlp_out"}
# The linear modules LoRA goes on to change a component (a version 2 layer map entry's ``modules``).
COMPONENT_MODULES = {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def component_hooks(n_layers: int) -> tuple[str, ...]:
    """Capture hooks for every block's attention output, then every block's MLP output."""
    return hook_names(n_layers, HOOK_KIND["attn"]) + hook_names(n_layers, HOOK_KIND["mlp"])


def split_components(activations) -> np.ndarray:
    """``[sample, 2 * layer, d_model]`` captured with ``component_hooks`` -> ``[sample, component, layer,
    d_model]`` (component 0 attention, 1 MLP)."""
    X = as_layers(activations)
    if X.shape[1] % 2:
        raise ConfigError(f"component activations need attention and MLP hooks for every layer, got {X.shape[1]}")
    return X.reshape(X.shape[0], 2, X.shape[1] // 2, X.shape[2])


@dataclass
class ComponentAttribution:
    """Per component and layer (module docstring), each ``[component, layer]`` (rows ``COMPONENTS``)."""

    written_base: np.ndarray
    written_finetuned: np.ndarray
    lost: np.ndarray
    patch_effect: np.ndarray  # NaN where the patching sweep did not run
    amplification: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        shapes = {np.shape(getattr(self, f.name)) for f in fields(self)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != len(COMPONENTS):
            raise ConfigError(f"ComponentAttribution: every field must be [component, layer], got {sorted(shapes)}")

    @property
    def n_layers(self) -> int:
        return self.score.shape[1]

    def ranked(self) -> list[tuple[int, str]]:
        """Every ``(layer, component)``, highest score first (ties: lower layer, attention first)."""
        order = np.argsort(-self.score.T.reshape(-1), kind="stable")  # [layer, component] flattened
        return [(int(i) // len(COMPONENTS), COMPONENTS[int(i) % len(COMPONENTS)]) for i in order]

    def to_dict(self) -> dict:
        return {
            f.name: [[None if not np.isfinite(x) else float(x) for x in row] for row in getattr(self, f.name)]
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict) -> ComponentAttribution:
        return cls(
            **{
                f.name: np.array([[np.nan if x is None else x for x in row] for row in data[f.name]], dtype=float)
                for f in fields(cls)
            }
        )


def _positive_unit(values: np.ndarray) -> np.ndarray:
    values = np.maximum(0.0, np.nan_to_num(values))
    top = values.max()
    return values / top if top > 0 else np.zeros_like(values)


def attribute(
    base: dict[str, np.ndarray],
    finetuned: dict[str, np.ndarray],
    refusal_directions: np.ndarray,
    separation_base: np.ndarray,
    patch_effect: np.ndarray | None = None,
    weights: dict[str, float] | None = None,
) -> ComponentAttribution:
    """The attribution of the module docstring.

    ``base`` and ``finetuned`` map ``harmful``, ``harmless`` and ``task`` to component activations
    ``[sample, component, layer, d_model]`` (``split_components``); ``refusal_directions`` ``[layer,
    d_model]`` are the base's unit refusal directions, ``separation_base`` ``[layer]`` the residual
    stream's separation along them; ``patch_effect`` ``[component, layer]`` is ``patch_sweep``'s.
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    units = np.asarray(refusal_directions, dtype=float)
    units = units / np.maximum(np.linalg.norm(units, axis=-1, keepdims=True), 1e-12)

    def written(acts: dict[str, np.ndarray]) -> np.ndarray:
        along = {kind: np.einsum("ncld,ld->ncl", acts[kind], units).mean(0) for kind in ("harmful", "harmless")}
        return along["harmful"] - along["harmless"]

    def task_norm(acts: dict[str, np.ndarray]) -> np.ndarray:
        return np.linalg.norm(acts["task"].mean(0) - acts["harmless"].mean(0), axis=-1)

    written_base, written_ft = written(base), written(finetuned)
    lost = (written_base - written_ft) / max(float(np.abs(separation_base).max()), 1e-12)
    amplification = task_norm(finetuned) / np.maximum(task_norm(base), 1e-12) - 1.0
    patch = np.full_like(lost, np.nan) if patch_effect is None else np.asarray(patch_effect, dtype=float)
    score = (
        weights["suppression"] * _positive_unit(lost)
        + weights["causal"] * _positive_unit(patch)
        + weights["amplification"] * _positive_unit(amplification)
    )
    return ComponentAttribution(written_base, written_ft, lost, patch, amplification, score)


@torch.no_grad()
def patch_sweep(
    base: LoadedModel,
    finetuned: LoadedModel,
    harmful: PromptSet,
    token_ids: Sequence[int],
    *,
    layers: Sequence[int] | None = None,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """``patch_c`` of the module docstring, ``[component, layer]`` (NaN at layers not in ``layers``).

    Per batch the base runs once (every component's output, at every position) and the fine-tuned model
    once (its residual stream after every block); each patched run then resumes the fine-tuned model
    from the block's input, with that one component's output replaced by the base's. The prompts' shared
    prefix (the system turn) runs once per model, and once per patched component from its block on
    (``interp.core.kvcache``). Under several processes each runs every N-th batch and the sums are added
    (``interp.distributed``)."""
    n_layers = finetuned.n_layers
    layers = list(range(n_layers)) if layers is None else sorted(layers)
    seqs = chat.encode(base.tokenizer, harmful.instructions)
    pad = base.tokenizer.pad_token_id
    totals = np.zeros((len(COMPONENTS), n_layers))
    plain = 0.0
    points = [(layer, HOOK_KIND[c]) for c in COMPONENTS for layer in layers]
    inner = [layer for layer in layers if layer > 0]  # the layers entered from a block's output
    entering_points = [(layer - 1, "resid_post") for layer in inner]
    shared = seqs[0][: shared_length(seqs)]
    base_prefix = run_prefix(base.hf, shared, points)
    ft_prefix = run_prefix(finetuned.hf, shared, entering_points)
    patched: dict[tuple[int, str], SharedPrefix] = {}  # the prefix with one component patched, from its block on
    mine = split(list(batches(seqs, batch_size, pad)))  # this process's batches
    for batch in tqdm(mine, desc="component patching", disable=not progress):
        rows = [seqs[i] for i in batch.index]
        written = dict(zip(points, read_points(base.hf, after_prefix(rows, base_prefix, pad, base.device), points)))
        inputs = after_prefix(rows, ft_prefix, pad, finetuned.device)
        entering = dict(zip(inner, read_points(finetuned.hf, inputs, entering_points)))
        logits = last_logits(finetuned.hf, after_prefix(rows, ft_prefix, pad, finetuned.device))
        plain += float(refusal_log_odds(torch.log_softmax(logits, -1), token_ids).sum())
        for layer in layers:
            for row, c in enumerate(COMPONENTS):
                kind = HOOK_KIND[c]
                if (layer, kind) not in patched:
                    with replace_output(finetuned.hf, layer, kind, base_prefix.outputs[layer, kind]):
                        patched[layer, kind] = run_prefix(finetuned.hf, shared, start=layer, below=ft_prefix)
                inputs = after_prefix(rows, patched[layer, kind], pad, finetuned.device)
                resume = resume_after(finetuned.hf, layer - 1, entering[layer]) if layer > 0 else nullcontext()
                with resume, replace_output(finetuned.hf, layer, kind, written[layer, kind]):
                    logprobs = torch.log_softmax(last_logits(finetuned.hf, inputs), -1)
                totals[row, layer] += float(refusal_log_odds(logprobs, token_ids).sum())
    summed = sum_array(np.append(totals.reshape(-1), plain))  # over every process's prompts
    totals, plain = summed[:-1].reshape(totals.shape), summed[-1]
    effect = np.full((len(COMPONENTS), n_layers), np.nan)
    effect[:, layers] = (totals[:, layers] - plain) / len(seqs)
    return effect


def component_map(layer_map: LayerMap, ranked: Sequence[tuple[int, str]], k: int) -> LayerMap:
    """``layer_map`` with its entries on the ``k`` top-ranked components (``(layer, "attn" | "mlp")``,
    ``interp.measures.components``) instead of whole blocks: LoRA on the attention's q/k/v/o or the MLP's
    gate/up/down of each; aligned at their layers and the last. Both components of a block chosen make
    one entry with all seven modules."""
    if not 1 <= k <= len(ranked):
        raise LayerMapError(f"k must be between 1 and {len(ranked)} components, got {k}")
    chosen: dict[int, set[str]] = {}
    for layer, name in ranked[:k]:
        chosen.setdefault(layer, set()).update(COMPONENT_MODULES[name])
    order = list(KNOWN_MODULES)
    entries = [{"layer": layer, "modules": sorted(names, key=order.index)} for layer, names in sorted(chosen.items())]
    selected = sorted(chosen)
    return replace(
        layer_map,
        selected_layers=selected,
        alignment_layers=sorted(set(selected) | {layer_map.n_layers - 1}),
        entries=entries,
    )
