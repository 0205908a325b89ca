"""The measures at every post-instruction position, and the refusal direction chosen over (layer, position).

**Positions.** The analysis captures the residual stream at the last ``P`` prompt tokens: with a chat
template these are the post-instruction tokens (for ChatML ``<|im_end|>``, ``\\n``, ``<|im_start|>``,
``assistant``, ``\\n``), where Arditi et al. (2024) find the refusal direction. ``position_metrics``
runs every measure of ``compare`` at each of them.

**Selection** (Arditi et al. 2024, section 2.3 and appendix C). Every base-model difference-in-means
vector ``r_{l,p}`` (harmful minus harmless, residual stream after block ``l`` at position ``p``) is a
candidate, scored by the base model on prompts it was not fitted on, with the refusal score ``s`` (the
log-odds that the first answer token begins a refusal, ``interp.core.judge.refusal_log_odds``):

    bypass_{l,p} = mean over harmful prompts of s with the unit direction r^ ablated, x - (x . r^) r^,
                   from the residual stream entering block 0 and after every block, at every position
    induce_{l,p} = mean over harmless prompts of s with r_{l,p} added after block l at every position
    kl_{l,p}     = mean over harmless prompts of KL(p_base || p_ablated), the next-token distributions
                   at the last prompt token without and with the ablation of bypass

A candidate is kept when ``induce > 0`` (adding it makes harmless prompts more likely refused than
not), ``kl < 0.1`` (ablating it leaves harmless prompts nearly unchanged) and ``l < 0.8 L`` (near the
unembedding a direction reads out tokens rather than a concept; layers from ``0.8 L`` on are not scored).
The selected direction is the kept candidate with the lowest ``bypass``: the one whose removal most
undoes refusal. When no candidate passes the 0.1 bound (in a small model the refusal direction may
also carry much of its ordinary behaviour), the bound is raised to 0.2, then 0.5, then 1.0, and the
bound that selected is reported with the selection. Arditi et al. ablate the direction from every
component's write; here it is ablated from the embeddings and every block's output, which gives the
same residual stream between blocks (inside a block, the MLP may still read the attention's write
along the direction).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.bridge import (
    ablate_direction,
    block_outputs,
    decoder_layers,
    intervene,
    last_logits,
    resume_after,
)
from ..core.chat import ChatFormat, batches
from ..core.judge import refusal_log_odds
from ..core.kvcache import SharedPrefix, after_prefix, run_prefix, shared_length, shared_prefix
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from ..distributed import collect, split
from ..errors import ConfigError
from .compare import PairActivations, PairMetrics, compare

KL_BOUNDS = (0.1, 0.2, 0.5, 1.0)  # Arditi et al.'s bound first; the next ones only if it keeps nothing
KL_MAX = KL_BOUNDS[0]
LAYER_FRACTION = 0.8


# ----------------------------------------------------------------------------- measures per position
@dataclass
class PositionMetrics:
    """``compare``'s metrics at each captured position: ``metrics[i]`` at ``positions[i]`` (an offset
    from the end of the prompt, ``-1`` the last token), whose token is ``tokens[i]``."""

    positions: list[str]
    tokens: list[str]
    metrics: list[PairMetrics]

    def __post_init__(self) -> None:
        if not (len(self.positions) == len(self.tokens) == len(self.metrics)) or not self.positions:
            raise ConfigError("PositionMetrics: one token and one PairMetrics per position")

    def grid(self, name: str) -> np.ndarray:
        """One metric at every position and layer: ``[position, layer]``."""
        return np.stack([m.as_dict()[name] for m in self.metrics])

    @property
    def last(self) -> PairMetrics:
        return self.metrics[self.positions.index("-1")] if "-1" in self.positions else self.metrics[-1]

    def to_dict(self) -> dict:
        return {
            "positions": self.positions,
            "tokens": self.tokens,
            "metrics": [
                {k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in m.as_dict().items()}
                for m in self.metrics
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> PositionMetrics:
        return cls(data["positions"], data["tokens"], [PairMetrics.from_dict(m) for m in data["metrics"]])


def position_tokens(model: LoadedModel, chat: ChatFormat, n: int) -> list[str]:
    """The last ``n`` tokens of a rendered prompt (they follow the instruction, so any prompt gives them)."""
    ids = chat.encode(model.tokenizer, ["x"])[0][-n:]
    return [model.tokenizer.decode([i]) for i in ids]


def position_metrics(
    activations: dict[str, np.ndarray], positions: Sequence[str], tokens: Sequence[str], probe_seed: int = 0
) -> PositionMetrics:
    """``compare`` at each position; ``activations`` maps ``PairActivations``' field names to ``[sample,
    layer, position, d_model]`` arrays."""
    metrics = []
    for p in range(len(positions)):
        metrics.append(
            compare(PairActivations(**{k: np.asarray(v)[:, :, p] for k, v in activations.items()}), probe_seed)
        )
    return PositionMetrics(list(positions), list(tokens), metrics)


# ----------------------------------------------------------------------------- direction selection
@dataclass
class DirectionSelection:
    """The selection scores of every candidate ``[position, layer]`` (NaN: not scored, ``l >= 0.8 L``),
    the unedited scores, and the selected candidate (module docstring); ``selected`` is ``None`` when no
    candidate passes the filter."""

    positions: list[str]
    bypass: np.ndarray
    induce: np.ndarray
    kl: np.ndarray
    score_harmful: float  # mean refusal score of the harmful prompts, nothing ablated
    score_harmless: float
    max_layer: int  # candidates at layers >= max_layer are not scored
    n_harmful: int
    n_harmless: int
    selected_layer: int | None = None
    selected_position: str | None = None
    kl_max: float = KL_MAX
    vector: np.ndarray | None = None  # [d_model] r_{l,p} of the selected candidate (the steering baseline's)

    @property
    def kept(self) -> np.ndarray:
        """``[position, layer]``: the candidates that pass the filter."""
        with np.errstate(invalid="ignore"):
            return (self.induce > 0) & (self.kl < self.kl_max) & np.isfinite(self.bypass)

    def scores_of_selected(self) -> dict | None:
        if self.selected_layer is None:
            return None
        p = self.positions.index(self.selected_position)
        layer = self.selected_layer
        return {
            "layer": layer,
            "position": self.selected_position,
            "bypass": float(self.bypass[p, layer]),
            "induce": float(self.induce[p, layer]),
            "kl": float(self.kl[p, layer]),
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("bypass", "induce", "kl"):
            out[name] = [[None if not np.isfinite(x) else float(x) for x in row] for row in getattr(self, name)]
        out["vector"] = None if self.vector is None else [float(x) for x in self.vector]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DirectionSelection:
        grids = {
            name: np.array([[np.nan if x is None else x for x in row] for row in data[name]], dtype=float)
            for name in ("bypass", "induce", "kl")
        }
        vector = None if data.get("vector") is None else np.asarray(data["vector"], dtype=np.float32)
        return cls(**{**data, **grids, "vector": vector})


def select(
    positions: Sequence[str],
    bypass: np.ndarray,
    induce: np.ndarray,
    kl: np.ndarray,
    **scores,
) -> DirectionSelection:
    """The filter and the choice of the module docstring over scored candidates ``[position, layer]``,
    with the first bound of ``KL_BOUNDS`` that keeps a candidate."""
    for bound in KL_BOUNDS:
        selection = DirectionSelection(list(positions), bypass, induce, kl, kl_max=bound, **scores)
        kept = selection.kept
        if kept.any():
            p, layer = np.unravel_index(np.argmin(np.where(kept, bypass, np.inf)), bypass.shape)
            selection.selected_layer, selection.selected_position = int(layer), positions[int(p)]
            return selection
    return selection


@contextmanager
def ablated_everywhere(hf_model, unit: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``unit`` is removed from the residual stream entering block 0 and after every
    block (``ablate_direction``), at every position."""
    edit = ablate_direction(unit)

    def embedding(module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    blocks = decoder_layers(hf_model)
    handle = blocks[0].register_forward_pre_hook(embedding, with_kwargs=True)
    try:
        with intervene(hf_model, {layer: edit for layer in range(len(blocks))}):
            yield
    finally:
        handle.remove()


@torch.no_grad()
def select_direction(
    base: LoadedModel,
    vectors: np.ndarray,
    positions: Sequence[str],
    harmful: PromptSet,
    harmless: PromptSet,
    token_ids: Sequence[int],
    *,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 32,
    layers: Sequence[int] | None = None,
    score_all: bool = False,
    progress: bool = True,
) -> DirectionSelection:
    """Score the candidates ``vectors[position, layer, d_model]`` (the base's difference-in-means
    vectors) on ``harmful`` and ``harmless`` and select one (module docstring).

    ``induce`` is scored for every candidate below ``0.8 L`` first (a forward resumed after block ``l``);
    ``bypass`` and ``kl`` (a full forward with the ablation) only where ``induce > 0`` unless
    ``score_all``: the filter is a conjunction, so the selection is the same, for a fraction of the time.
    The prompts' shared prefix (the system turn) runs once per candidate with the same edit. ``layers``
    limits the candidates to those layers (below ``0.8 L``; default: every one)."""
    vectors = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    n_pos, n_layers = vectors.shape[:2]
    if n_pos != len(positions) or n_layers != base.n_layers:
        raise ConfigError(
            f"vectors {tuple(vectors.shape[:2])} do not match {len(positions)} positions x {base.n_layers} layers"
        )
    max_layer = max(1, int(LAYER_FRACTION * n_layers))
    hf, pad, device = base.hf, base.tokenizer.pad_token_id, base.device
    seqs = chat.encode(base.tokenizer, list(harmful.instructions) + list(harmless.instructions))
    is_harmful = np.r_[np.ones(len(harmful), bool), np.zeros(len(harmless), bool)]
    every = [b.index for b in batches(seqs, batch_size, pad)]
    gentle = [[len(harmful) + i for i in b.index] for b in batches(seqs[len(harmful) :], batch_size, pad)]
    shared = seqs[0][: shared_length(seqs)]

    def inputs(rows: list[int], prefix: SharedPrefix) -> dict:
        return after_prefix([seqs[i] for i in rows], prefix, pad, device)

    def log_softmax(rows: list[int], prefix: SharedPrefix, resume=nullcontext()) -> torch.Tensor:
        with resume:
            return torch.log_softmax(last_logits(hf, inputs(rows, prefix)), -1)

    plain_prefix = shared_prefix(hf, seqs)
    plain = {tuple(rows): log_softmax(rows, plain_prefix) for rows in every}
    plain_scores = np.zeros(len(seqs))
    for rows in every:
        plain_scores[rows] = refusal_log_odds(plain[tuple(rows)], token_ids).cpu().numpy()
    # The harmless prompts' residual stream after each candidate block, to add a vector there and resume.
    layers = [layer for layer in (range(max_layer) if layers is None else sorted(set(layers))) if layer < max_layer]
    if not layers:
        raise ConfigError(f"no candidate layer below {max_layer} (0.8 of {n_layers} layers) to select from")
    resid = [dict(zip(layers, block_outputs(hf, inputs(rows, plain_prefix), layers))) for rows in gentle]

    bypass, induce, kl = (np.full((n_pos, n_layers), np.nan) for _ in range(3))
    mine = split(layers)  # this process's layers when several run (interp.distributed)
    for layer in tqdm(mine, desc="selection: induce", disable=not progress):
        # One pass per layer for every position's vector: rows are position-major copies of the prompts.
        added = vectors[:, layer].to(device)  # [position, d_model]

        def add_each(x: torch.Tensor, added=added) -> torch.Tensor:  # x: [position * rows, seq, d_model]
            return x + added.repeat_interleave(len(x) // n_pos, 0)[:, None].to(x.dtype)

        with intervene(hf, {layer: add_each}):  # the system turn once per position, for that position's rows
            prefix = run_prefix(hf, shared, rows=n_pos)
        scores = []
        for rows, states in zip(gentle, resid):
            copies = [row for _ in range(n_pos) for row in rows]
            each = SharedPrefix(
                prefix.length,
                [(k.repeat_interleave(len(rows), 0), v.repeat_interleave(len(rows), 0)) for k, v in prefix.kv or []]
                or None,
            )
            hidden = add_each(states[layer].repeat(n_pos, 1, 1))
            logprobs = log_softmax(copies, each, resume_after(hf, layer, hidden))
            scores.append(refusal_log_odds(logprobs, token_ids).reshape(n_pos, len(rows)))
        induce[:, layer] = torch.cat(scores, 1).mean(1).cpu().numpy()
    for part in collect([(layer, induce[:, layer]) for layer in mine]):  # every process's layers
        for layer, column in part:
            induce[:, layer] = column
    todo = [(p, layer) for p in range(n_pos) for layer in layers if score_all or induce[p, layer] > 0]
    mine = split(todo)
    for p, layer in tqdm(mine, desc="selection: bypass and KL", disable=not progress):
        scores, divergence = np.zeros(len(seqs)), []
        with ablated_everywhere(hf, vectors[p, layer] / vectors[p, layer].norm().clamp(min=1e-12)):
            prefix = shared_prefix(hf, seqs)
            for rows in every:
                logprobs, reference = log_softmax(rows, prefix), plain[tuple(rows)]
                scores[rows] = refusal_log_odds(logprobs, token_ids).cpu().numpy()
                per_row = (reference.exp() * (reference - logprobs)).sum(-1)
                divergence += per_row[torch.as_tensor(~is_harmful[rows])].tolist()
        bypass[p, layer] = scores[is_harmful].mean()
        kl[p, layer] = float(np.mean(divergence))
    for part in collect([(p, layer, bypass[p, layer], kl[p, layer]) for p, layer in mine]):
        for p, layer, b, k in part:
            bypass[p, layer], kl[p, layer] = b, k
    selection = select(
        positions,
        bypass,
        induce,
        kl,
        score_harmful=float(plain_scores[is_harmful].mean()),
        score_harmless=float(plain_scores[~is_harmful].mean()),
        max_layer=max_layer,
        n_harmful=len(harmful),
        n_harmless=len(harmless),
    )
    if selection.selected_layer is not None:
        p = list(positions).index(selection.selected_position)
        selection.vector = vectors[p, selection.selected_layer].cpu().numpy().astype(np.float32)
    return selection
