"""Causal checks through bridge hooks: a logit refusal score and per-layer interventions.

* ``refusal_score``: at the last prompt position, the log-odds that the next token begins a refusal,
  ``log p(R) - log(1 - p(R))`` with ``p(R)`` the total probability of the refusal tokens ``R``. As in
  Arditi et al. (2024), ``R`` is read off the model's own refusals: their most common first tokens.
* Interventions at block ``l``'s residual output (``blocks.l.hook_resid_post``), all positions:
  ``add`` the base refusal vector (difference in means) to the fine-tuned model; ``ablate`` the base
  refusal direction from the base model (``x - (x.u)u``); ``patch`` the base model's residual into the
  fine-tuned model. Each gives a per-layer change in the mean refusal score on harmful prompts.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError
from .evaluate import Behaviour, behaviour, generate, is_refusal, refusal_log_odds
from .models import LoadedModel
from .prompts import ChatFormat, PromptSet
from .tokens import position_ids

Hook = tuple[str, Callable]


def resid_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def refusal_token_ids(tokenizer, answers: Sequence[str], top: int = 3) -> list[int]:
    """The ``top`` most common first tokens of the refusals among ``answers``."""
    firsts = Counter(
        tokenizer(a, add_special_tokens=False).input_ids[0] for a in answers if is_refusal(a) and a.strip()
    )
    if not firsts:
        raise ConfigError("no refusals among the answers: cannot find refusal tokens")
    return [token for token, _ in firsts.most_common(top)]


def find_refusal_tokens(model: LoadedModel, harmful: PromptSet, *, n_prompts: int = 16, batch_size: int = 32,
                        progress: bool = True) -> list[int]:
    """Refusal tokens read off ``model``'s own short answers to the first ``n_prompts`` harmful prompts."""
    answers = behaviour(model, harmful.head(n_prompts), max_new_tokens=8, batch_size=batch_size,
                        progress=progress).answers
    return refusal_token_ids(model.tokenizer, answers)


class _Stop(Exception):
    pass


def _batches(model: LoadedModel, prompts: PromptSet, chat: ChatFormat, batch_size: int):
    """Left-padded token batches in the prompts' order: ``(ids, mask, position_ids)``."""
    texts = chat.render_all(model.tokenizer, prompts)
    for start in range(0, len(texts), batch_size):
        enc = model.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
        yield enc.input_ids, enc.attention_mask, position_ids(enc.attention_mask)


@torch.no_grad()
def last_logits(model: LoadedModel, ids, mask, positions, hooks: Sequence[Hook] = ()) -> torch.Tensor:
    """Next-token logits at the last position ``[batch, d_vocab]``, with optional bridge hooks.

    The forward pass stops after the final norm; only the last position is projected to the vocabulary.
    """
    final = {}

    def grab(activation, hook):
        final["x"] = activation[:, -1]
        raise _Stop

    try:
        model.bridge.run_with_hooks(
            ids.to(model.device), fwd_hooks=list(hooks) + [("ln_final.hook_out", grab)],
            attention_mask=mask.to(model.device), position_ids=positions.to(model.device),
        )
    except _Stop:
        pass
    return model.hf.get_output_embeddings()(final["x"]).float()


def refusal_score(
    model: LoadedModel, prompts: PromptSet, token_ids: Sequence[int], *, hooks_for_batch=None,
    chat: ChatFormat = ChatFormat(), batch_size: int = 32,
) -> np.ndarray:
    """Refusal log-odds per prompt ``[prompt]``. ``hooks_for_batch(start, ids)`` may add bridge hooks."""
    scores = []
    start = 0
    for ids, mask, pos in _batches(model, prompts, chat, batch_size):
        hooks = hooks_for_batch(start, ids) if hooks_for_batch else ()
        logp = torch.log_softmax(last_logits(model, ids, mask, pos, hooks), -1)
        scores.append(refusal_log_odds(logp, token_ids).cpu().numpy())
        start += len(ids)
    return np.concatenate(scores)


# ----------------------------------------------------------------------------- interventions
def add_vector(vector: torch.Tensor) -> Callable:
    def hook(activation, hook):  # activation: [batch, seq, d_model]
        return activation + vector.to(activation.dtype)
    return hook


def ablate_direction(unit: torch.Tensor) -> Callable:
    def hook(activation, hook):
        u = unit.to(activation.dtype)
        return activation - (activation @ u)[..., None] * u
    return hook


def replace_with(values: torch.Tensor) -> Callable:
    def hook(activation, hook):
        return values.to(activation.dtype)
    return hook


@torch.no_grad()
def residuals(model: LoadedModel, prompts: PromptSet, layers: Sequence[int], *, chat: ChatFormat = ChatFormat(),
              batch_size: int = 32) -> list[dict[int, torch.Tensor]]:
    """Per batch, the full residual ``[batch, seq, d_model]`` after each block in ``layers``."""
    out = []
    for ids, mask, pos in _batches(model, prompts, chat, batch_size):
        store: dict[int, torch.Tensor] = {}

        def keep(layer):
            def hook(activation, hook):
                store[layer] = activation.detach().clone()
            return hook

        model.bridge.run_with_hooks(ids.to(model.device), fwd_hooks=[(resid_hook(l), keep(l)) for l in layers],
                                    attention_mask=mask.to(model.device), position_ids=pos.to(model.device))
        out.append(store)
    return out


def causal_sweep(
    base: LoadedModel, finetuned: LoadedModel, harmful: PromptSet, refusal_vectors: np.ndarray,
    token_ids: Sequence[int], *, layers: Sequence[int] | None = None, chat: ChatFormat = ChatFormat(),
    batch_size: int = 32, progress: bool = True,
) -> dict[str, np.ndarray]:
    """Per-layer effects on the mean refusal score of ``harmful`` prompts.

    ``refusal_vectors[layer, d_model]`` are the base model's difference-in-means refusal vectors. Returns
    ``add_effect`` (fine-tuned + vector minus fine-tuned), ``ablate_effect`` (base minus base with the
    direction ablated), ``patch_effect`` (fine-tuned with the base residual patched in, minus
    fine-tuned), each ``[layer]`` with NaN at layers not swept, and the unmodified scores.
    """
    n_layers = finetuned.n_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    if refusal_vectors.shape[0] != n_layers:
        raise ConfigError(f"{refusal_vectors.shape[0]} refusal vectors for a model with {n_layers} layers")
    vectors = torch.tensor(refusal_vectors, dtype=torch.float32)
    units = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    score = lambda model, hooks_for_batch=None: refusal_score(  # noqa: E731
        model, harmful, token_ids, hooks_for_batch=hooks_for_batch, chat=chat, batch_size=batch_size).mean()
    ft_score, base_score = score(finetuned), score(base)
    base_resid = residuals(base, harmful, layers, chat=chat, batch_size=batch_size)
    effects = {name: np.full(n_layers, np.nan) for name in ("add_effect", "ablate_effect", "patch_effect")}
    for layer in tqdm(layers, desc="causal sweep", disable=not progress):
        name = resid_hook(layer)
        effects["add_effect"][layer] = score(finetuned, lambda s, ids: [(name, add_vector(vectors[layer]))]) - ft_score
        effects["ablate_effect"][layer] = base_score - score(base, lambda s, ids: [(name, ablate_direction(units[layer]))])
        effects["patch_effect"][layer] = score(
            finetuned, lambda s, ids: [(name, replace_with(base_resid[s // batch_size][layer]))]) - ft_score
    return effects | {"score_finetuned": np.array(ft_score), "score_base": np.array(base_score)}


@contextmanager
def steering(model: LoadedModel, layer: int, vector: torch.Tensor | np.ndarray, scale: float = 1.0):
    """Inside the block, every forward of ``model`` (including ``model.hf.generate``) adds
    ``scale * vector`` to block ``layer``'s residual output, through a bridge hook."""
    vector = torch.as_tensor(vector, dtype=torch.float32) * scale
    with model.bridge.hooks(fwd_hooks=[(resid_hook(layer), add_vector(vector))]):
        yield model


def steered_behaviour(
    model: LoadedModel, prompts: PromptSet, layer: int, vector, scale: float = 1.0, **kwargs
) -> Behaviour:
    """Greedy answers with the refusal vector added at ``layer``, judged like any other answers."""
    with steering(model, layer, vector, scale):
        answers = generate(model, prompts, **kwargs)
    return Behaviour(prompts, answers)
