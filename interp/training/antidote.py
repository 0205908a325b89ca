"""Antidote, a published weight-space restoration method, written here (the others: ``interp.training.peers``,
which also defines the terms used below: the checkpoints ``aligned`` and ``finetuned``, the block linear weights
``W[l, m]``, ``[d_out, d_in]``, and the task update ``dW = W_finetuned - W_aligned``). Like every method there it
edits only the block linear weights, returns a new ``LoadedModel`` and never changes its inputs.

Sources: the paper, its released code (with the commit read), and the peer survey ``shared/reviews/peers.md``
(beside the repository, "the survey" below), which read the released code.

**Antidote** (``antidote``; Huang et al., "Antidote: Post-fine-tuning Safety Alignment for Large Language Models
against Harmful Fine-tuning", ICML 2025, arXiv 2408.09600; git-disl/Antidote ``utils.prune_wanda_outlier``, read at
0afc720). This is one-shot Wanda pruning (Sun et al., ICLR 2024) of the fine-tuned model, calibrated on harmful data.
The fine-tuned model runs on the calibration prompts, rendered with the chat template and followed, when ``answers``
are given, by the answer tokens (the release uses harmful prompt + harmful answer pairs). For every block linear
module the input norm per column, ``n_j = ||X[:, j]||_2``, is collected over every non-padding token (``X`` is
``[tokens, d_in]``, the inputs to that module: ``input_norms``). Each weight is scored ``S_ij = |W_ij| n_j``, and
the highest-scored weights are set to zero:

* ``per="row"`` (the release): in each output row ``i``, the ``k = d_in - floor(d_in (1 - fraction))`` highest
  scores (``fraction`` is the release's ``dense_ratio``: 0.05 in its script per the survey; ``train.py``'s default
  is 0.1).
* ``per="module"``: the ``numel - floor(numel (1 - fraction))`` highest scores of the whole matrix.

How the release differs: (1) For its LoRA fine-tunes (the default, ``full_finetuning="False"``) it prunes the
*adapter's factor matrices* (``lora_A`` and ``lora_B`` of ``q_proj`` and ``v_proj``, its fine-tune's targets), not
merged weights; for a full fine-tune it prunes ``q_proj``, ``k_proj`` and ``v_proj``. With ``aligned`` this module
prunes the task update ``dW = W_ft - W_aligned`` of all seven modules (``modules`` narrows this): scores
``|dW_ij| n_j``, and a pruned entry returns to its aligned value, which is the release's pruning of the adapter
(for an adapter merged into the weights, its update) without its restriction to q and v. Without ``aligned`` it
prunes the merged weights themselves, which also removes aligned weights and not only the task update. (2) Its
calibration runs right-padded batches without an attention mask, so padding tokens add to ``n_j``; here padding is
masked out. (3) It keeps ``n_j^2`` as a running mean over samples; that is a constant
factor per module and changes no ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..core.bridge import block_outputs
from ..core.chat import ChatFormat, batches, tokenize
from ..core.models import LINEAR_MODULES, LoadedModel
from ..core.prompts import PromptSet
from ..errors import ConfigError
from .peers import ModuleKey, block_linears, block_weights, check_checkpoints, with_weights


def calibration_ids(
    model: LoadedModel,
    prompts: PromptSet | Sequence[str],
    answers: Sequence[str] | None = None,
    chat: ChatFormat | None = None,
) -> list[list[int]]:
    """Token ids of each prompt rendered with the chat template, followed by its answer's tokens when ``answers`` are
    given."""
    instructions = list(prompts.instructions if isinstance(prompts, PromptSet) else prompts)
    if not instructions:
        raise ConfigError("Antidote needs at least one calibration prompt")
    ids = (chat or ChatFormat()).encode(model.tokenizer, instructions)
    if answers is not None:
        if len(answers) != len(instructions):
            raise ConfigError(f"{len(answers)} answers for {len(instructions)} calibration prompts")
        ids = [seq + tokenize(model.tokenizer, answer) for seq, answer in zip(ids, answers)]
    return ids


def input_norms(
    model: LoadedModel,
    sequences: Sequence[Sequence[int]],
    *,
    modules: Sequence[str] = LINEAR_MODULES,
    batch_size: int = 8,
) -> dict[ModuleKey, torch.Tensor]:
    """``||X[:, j]||_2`` per input column ``j`` (``[d_in]``, float32) of every block linear module ``modules``:
    ``X`` ``[tokens, d_in]`` holds the module's inputs at every non-padding token of ``sequences``, run through
    ``model`` in left-padded batches (``interp.core.chat.batches``)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    linears = block_linears(model.hf, modules)
    squares = {key: torch.zeros(m.in_features, device=m.weight.device) for key, m in linears.items()}  # float32
    state: dict[str, torch.Tensor] = {}

    def collect(key: ModuleKey):
        def hook(module, args):
            x = args[0].detach().to(torch.float32)  # [batch, seq, d_in]
            mask = state["mask"].to(x.device, torch.float32)[..., None]  # [batch, seq, 1]
            squares[key] += (x.square() * mask).sum(dim=(0, 1))

        return hook

    handles = [m.register_forward_pre_hook(collect(key)) for key, m in linears.items()]
    try:
        with torch.no_grad():
            for batch in batches(sequences, batch_size, model.tokenizer.pad_token_id):
                state["mask"] = batch.mask
                block_outputs(model.hf, batch.to(model.device), [model.n_layers - 1])
    finally:
        for handle in handles:
            handle.remove()
    return {key: value.sqrt() for key, value in squares.items()}


def wanda_prune_mask(scores: torch.Tensor, fraction: float, per: Literal["row", "module"] = "row") -> torch.Tensor:
    """A boolean ``[d_out, d_in]`` mask of the weights to zero: the highest ``scores``, in each row ``d_in - floor(d_in
    (1 - fraction))`` of them (``per="row"``), or ``numel - floor(numel (1 - fraction))`` over the whole matrix
    (``per="module"``)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if per == "row":
        k = scores.shape[1] - int(scores.shape[1] * (1.0 - fraction))
        if k > 0:
            mask.scatter_(1, torch.topk(scores, k, dim=1).indices, True)
    elif per == "module":
        k = scores.numel() - int(scores.numel() * (1.0 - fraction))
        if k > 0:
            mask.view(-1)[torch.topk(scores.reshape(-1), k).indices] = True
    else:
        raise ConfigError(f"per must be row or module, got {per!r}")
    return mask


def antidote(
    finetuned: LoadedModel,
    prompts: PromptSet | Sequence[str],
    fraction: float,
    *,
    aligned: LoadedModel | None = None,
    answers: Sequence[str] | None = None,
    per: Literal["row", "module"] = "row",
    modules: Sequence[str] = LINEAR_MODULES,
    chat: ChatFormat | None = None,
    batch_size: int = 8,
) -> LoadedModel:
    """Antidote: Wanda scores ``|W_ij| ||X[:, j]||_2`` with ``X`` the inputs of each block linear module ``modules``
    on the harmful calibration ``prompts`` (followed by ``answers`` if given) run through ``finetuned``; the top
    ``fraction`` of the weights by score, per output row (``per="row"``, the release) or per module, set to zero.
    With ``aligned``, only the task update is scored and pruned (``W_ft - W_aligned``: pruned entries return to the
    aligned weights), the analogue of the release pruning its LoRA adapter only. The module docstring has the
    formula and what the release does differently."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"the pruned fraction must be in [0, 1), got {fraction}")
    if per not in ("row", "module"):
        raise ConfigError(f"per must be row or module, got {per!r}")
    norms = input_norms(
        finetuned, calibration_ids(finetuned, prompts, answers, chat), modules=modules, batch_size=batch_size
    )
    if aligned is not None:
        check_checkpoints(finetuned, aligned)
    pruned = {}
    base = block_weights(aligned, modules) if aligned is not None else {}
    for key, weight in block_weights(finetuned, modules).items():
        target = base[key].to(weight.device, weight.dtype) if aligned is not None else torch.zeros_like(weight)
        scores = (weight - target).abs() * norms[key].to(weight.device, weight.dtype)[None, :]
        pruned[key] = torch.where(wanda_prune_mask(scores, fraction, per), target, weight)
    label = f"antidote({fraction:g} per {per}{', task update' if aligned is not None else ''})"
    return with_weights(finetuned, pruned, name=f"{label} of {finetuned.name}")
