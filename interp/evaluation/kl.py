"""The KL column of the evaluation table: how far a model's next-token distributions are from the
fine-tuned model's on the harmless prompts,

    KL = mean over scored positions of  sum_v p_ft(v) (log p_ft(v) - log p_model(v))

teacher-forced on each harmless prompt followed by the fine-tuned model's own complete greedy answer,
scored at the last prompt position and every answer position but the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from .. import distributed
from ..core.bridge import decoder_layers, intervene, record_block_inputs, resume_at
from ..core.chat import ChatFormat, tokenize
from ..core.kvcache import after_prefix, shared_prefix
from ..core.models import LoadedModel
from ..core.prompts import PromptSet
from .suite import Candidate


def first_changed_layer(candidate: Candidate, reference: LoadedModel) -> int:
    """The first block whose output can differ between ``candidate`` and ``reference``: the first with
    different weights, or the first an edit acts on (0 if the embeddings differ; the number of blocks if
    nothing does). Below it both compute the same residual stream, so the KL pass starts there."""
    hf, ref = candidate.model.hf, reference.hf
    blocks, ref_blocks = decoder_layers(hf), decoder_layers(ref)
    if len(blocks) != len(ref_blocks):
        return 0
    first = min(candidate.edits or {len(blocks): None})
    if hf is ref:
        return first
    if not torch.equal(hf.get_input_embeddings().weight, ref.get_input_embeddings().weight):
        return 0
    for layer, (a, b) in enumerate(zip(blocks[:first], ref_blocks[:first])):
        ours, theirs = dict(a.named_parameters()), dict(b.named_parameters())
        if ours.keys() != theirs.keys() or any(not torch.equal(p, theirs[name]) for name, p in ours.items()):
            return layer
    return first


@torch.no_grad()
def kl_to_reference(
    candidates: Sequence[Candidate],
    reference: LoadedModel,
    prompts: PromptSet,
    continuations: Sequence[str],
    *,
    chat: ChatFormat = ChatFormat(),
    batch_size: int = 32,
) -> list[float]:
    """Mean per-token ``KL(reference || candidate)`` for each candidate (see the module docstring).

    One pass over length-sorted batches: the reference's log-probabilities are computed once per batch
    and compared with every candidate's; logits are computed only for the last positions of a batch
    (the longest continuation plus one); the prompts' shared prefix is run once per model
    (``interp.core.kvcache``); a candidate starts at its first changed block (``first_changed_layer``)
    from the reference's residual stream there; the reference's own row is 0 with no forward pass."""
    tok = reference.tokenizer
    prompt_ids = chat.encode(tok, prompts.instructions)
    cont_ids = [tokenize(tok, c) for c in continuations]
    seqs = [p + c for p, c in zip(prompt_ids, cont_ids)]
    todo = [i for i, candidate in enumerate(candidates) if not candidate.is_model(reference)]
    totals = [0.0] * len(candidates)
    if not todo:
        return totals
    n_layers = len(decoder_layers(reference.hf))
    starts = {i: first_changed_layer(candidates[i], reference) for i in todo}
    todo = [i for i in todo if starts[i] < n_layers]  # the same computation as the reference: KL 0
    models = [(reference.hf, {})] + [(candidates[i].model.hf, candidates[i].edits or {}) for i in todo]
    prefixes = []
    for hf, edits in models:
        with intervene(hf, edits):
            prefixes.append(shared_prefix(hf, prompt_ids))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    count = 0
    for start in distributed.split(range(0, len(order), batch_size)):  # this process's batches
        index = order[start : start + batch_size]
        lengths = [len(cont_ids[i]) for i in index]
        keep = max(lengths) + 1
        scored = torch.zeros(len(index), keep, dtype=torch.bool)  # positions whose next token is an answer token
        for row, length in enumerate(lengths):
            scored[row, keep - 1 - length : keep - 1] = True
        rows = [seqs[i] for i in index]
        inputs = after_prefix(rows, prefixes[0], tok.pad_token_id, reference.device)
        with record_block_inputs(reference.hf, [starts[i] for i in todo if starts[i] > 0]) as entering:
            ref = _scored_logprobs(reference.hf, {}, inputs, keep, scored)
        for i, (hf, edits), prefix in zip(todo, models[1:], prefixes[1:]):
            resume = (starts[i], entering[starts[i]]) if starts[i] > 0 else None
            inputs = after_prefix(rows, prefix, tok.pad_token_id, next(hf.parameters()).device)
            cand = _scored_logprobs(hf, edits, inputs, keep, scored, resume)
            totals[i] += (ref.exp() * (ref - cand)).sum().item()
        count += int(scored.sum())
    summed = distributed.all_sum(torch.tensor([*totals, count], dtype=torch.float64, device=reference.device))
    *totals, count = summed.tolist()
    return [total / max(count, 1) for total in totals]


def _scored_logprobs(hf, edits, inputs: dict, keep: int, scored: torch.Tensor, resume=None) -> torch.Tensor:
    """Log-probabilities ``[scored position, d_vocab]`` of one model on one batch on its shared prefix
    (``after_prefix``'s ``inputs``): logits for the last ``keep`` positions only; ``resume=(layer,
    residual)`` starts at that block."""
    with intervene(hf, edits), resume_at(hf, *resume) if resume else nullcontext():
        logits = hf(**inputs, logits_to_keep=keep).logits
    return torch.log_softmax(logits.float(), -1)[scored]
