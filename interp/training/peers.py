"""Published weight-space restoration methods, written here: interpolation toward the aligned model, RESTA,
Safe LoRA and Antidote. Each is a function of checkpoints (Antidote also of harmful prompts) that returns a new
``LoadedModel`` and never changes its inputs.

**Terms.** Three checkpoints, named as these papers name them: ``unaligned``, ``aligned`` and ``finetuned``. In the
default pair (``interp.organism``) they are ``source`` (SmolLM2-135M-Instruct), ``base`` (source + the merged safety
LoRA) and ``finetuned`` (base + the merged task LoRA). For each decoder block ``l`` and each of its linear modules
``m`` (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``) the weight
``W[l, m]`` is ``[d_out, d_in]`` (``nn.Linear``'s layout: ``y = W x``). Two deltas (``weight_deltas``):

* the alignment vector ``V = W_aligned - W_unaligned`` (in the default pair: exactly the merged safety LoRA);
* the task update ``dW = W_finetuned - W_aligned`` (exactly the merged task LoRA).

Sources: each paper, the released code where named (with the commit read), and the peer survey
``shared/reviews/peers.md`` (beside the repository, "the survey" below), which read the released code of each.

Deltas and updates are computed in float32 (float64 for Safe LoRA's projections) and cast back to the weights' dtype.
Every method edits only these block linear weights. Every other parameter (embeddings, norms, biases, the
unembedding) is the fine-tuned model's. In the default pair only the block linear weights differ, so this loses
nothing; on a real base/instruct pair, the papers' versions of interpolation and RESTA also move the other parameters.

**Interpolation** (``interpolate``; WiSE-FT, Wortsman et al., CVPR 2022): ``W = (1 - t) W_ft + t W_aligned``, for
``t`` in [0, 1]. ``t = 0`` is the fine-tuned model and ``t = 1`` the aligned one. It equals ``W_aligned + (1 - t) dW``,
the task update scaled by ``lambda = 1 - t``. It is the floor every other method must beat: whatever safety a method
buys, this line buys by giving up task ability.

**RESTA** (``resta``; Bhardwaj, Anh and Poria, "Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned
Language Models through Task Arithmetic", ACL 2024, arXiv 2402.11746): ``W = W_ft + beta V``, adding the safety
vector back. With DARE (Yu et al., "Language Models are Super Mario", ICML 2024) at drop rate ``p``, the task update
is sparsified first: each element of ``dW`` is kept with probability ``1 - p`` (``k_ij`` in {0, 1}, an independent
draw from a generator seeded with ``seed``), and the kept elements are rescaled by ``1 / (1 - p)``:
``W = W_aligned + (k / (1 - p)) * dW + beta V``. The expectation over the draws is plain RESTA. It is computed as
``W_ft + (k / (1 - p) - 1) * dW + beta V``, so ``p = 0`` gives plain RESTA bit for bit. The paper sweeps ``beta``
and finds DARE helps most for PEFT fine-tunes. Where this differs from the paper (the survey, §2.2; the released code,
declare-lab/resta, was not read): the paper's unaligned model is a *shadow*, the aligned model fine-tuned on a few
harmful Q/A pairs, so its ``V = W_aligned - W_shadow``. Here ``V`` comes from the true unaligned checkpoint (the
organism's source), as SafeTune's port also does. The result is ``aligned + dW + beta V``, which, for ``beta = 1``
in the default pair, is the source plus both adapters with the safety one counted twice.

**Safe LoRA** (``safe_lora``; Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning
Large Language Models", NeurIPS 2024, arXiv 2405.16833; the released code is IBM/SafeLoRA ``model.py``, read at
d81fda1). Each module gets a matrix ``C`` built from ``V``, ``[d_out, d_out]``, acting on the output side:

* ``projection="released"``: ``C = V V^T / ||V||_F``. This is the paper's projection operator (its Figure 1) and
  the release's ``get_aligned_matrix``. **It is not a projector.** Write ``V = U diag(s) R^T`` (its SVD). Then
  ``C = U diag(s_i^2 / ||s||_2) U^T``, so ``C C = C`` only when every nonzero ``s_i`` equals ``sqrt(k)``, ``k``
  the rank of ``V``: in general ``C`` is not idempotent. ``C dW`` keeps ``dW``'s component along each left
  singular direction ``u_i`` scaled by ``s_i^2 / ||s||_2 <= s_i``, below 1 whenever the largest singular value of
  ``V`` is (an adapter-sized ``V``). On the modules it selects, the released "projection" therefore shrinks the
  task update towards zero, and ``cos`` measures direction only, not that shrinkage.
* ``projection="exact"``: ``C = V V^+ = U_k U_k^T``, the orthogonal projector onto the column space of ``V``.
  ``U_k`` are the left singular vectors whose singular values rise above the rounding of the subtraction that made
  ``V``: ``s_i > u (||W_aligned||_F + ||W_unaligned||_F)``, with ``u`` the unit roundoff of the weights' dtype. That
  bound covers the Frobenius norm, and so the largest singular value, of the rounding error; ``rank`` overrides it
  with the top ``rank`` directions. When ``V`` has full column rank this is ``V (V^T V)^{-1} V^T``, the exact
  projection that, per the survey, the paper's ``C`` stands in for cheaply. ``V V^+`` is defined for every ``V``.
  (``V = 0``: ``C = 0`` in both variants.)

The similarity per module is ``cos = <C dW, dW>_F / (||C dW||_F ||dW||_F)``, the Frobenius cosine between the
projected and the original update: how much of the task update lies in the alignment subspace. For the exact
projector it is ``||C dW||_F / ||dW||_F``. By convention ``cos = 1`` when ``dW = 0`` (there is nothing to project),
and ``cos = 0`` when ``C dW = 0`` but ``dW != 0``. The modules with ``cos <= tau`` are replaced by
``W = W_aligned + C dW``; the others keep ``W_ft``. ``tau`` comes from the selection:

* ``select="number"`` (the release's default, ``num_proj_layers = 10``): ``tau`` is the ``n_modules``-th lowest
  cosine. So the ``n_modules`` lowest-cosine modules are projected (the release's "layers" are modules, one per
  (layer, module) pair), and ties at ``tau`` are all projected, as the release's ``cos <= thrs`` does.
* ``select="threshold"``: ``tau = threshold`` (the release's default 0.5). Summaries report that projecting about
  11% of the modules works best.

How the release differs, where it matters: it edits the LoRA factor (``lora_B <- C lora_B``), which is ``C dW`` for
``dW = (alpha / r) B A``; the dense form here is the same for a LoRA fine-tune, and it also covers a full fine-tune.
The release rounds the cosines to 5 decimals before selecting them; this module does not round. The per-layer mean
of the cosines (``cosine_layer_map``) is a *weight-space* layer map: it can be compared with interp's activation layer
map (``interp.measures.layer_map``).

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

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..core.bridge import block_outputs, decoder_layers
from ..core.chat import ChatFormat, batches, tokenize
from ..core.models import LINEAR_MODULES, LoadedModel, check_pair
from ..core.prompts import PromptSet
from ..errors import ConfigError, ModelMismatchError

ModuleKey = tuple[int, str]  # (decoder block, linear module name), e.g. (3, "q_proj")
Projection = Literal["released", "exact"]
PROJECTIONS = ("released", "exact")
SELECTIONS = ("number", "threshold")


# ----------------------------------------------------------------------------- weights
def block_linears(hf_model, modules: Sequence[str] = LINEAR_MODULES) -> dict[ModuleKey, torch.nn.Linear]:
    """The ``nn.Linear`` modules named ``modules`` in every decoder block, keyed by ``(layer, name)``, in block order
    (the name is the last part of the module path: ``self_attn.q_proj`` is ``q_proj``)."""
    out: dict[ModuleKey, torch.nn.Linear] = {}
    for layer, block in enumerate(decoder_layers(hf_model)):
        named = {path.rsplit(".", 1)[-1]: m for path, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        missing = [name for name in modules if name not in named]
        if missing:
            raise ConfigError(f"decoder block {layer} has no linear module {missing[0]!r} (it has {sorted(named)})")
        out.update({(layer, name): named[name] for name in modules})
    return out


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(weight.dtype, torch.float32)


def block_weights(model: LoadedModel, modules: Sequence[str] = LINEAR_MODULES) -> dict[ModuleKey, torch.Tensor]:
    """Every block linear weight, ``[d_out, d_in]``, detached, in float32 at least (a copy only where cast)."""
    return {key: m.weight.detach().to(_compute_dtype(m.weight)) for key, m in block_linears(model.hf, modules).items()}


def weight_deltas(
    a: LoadedModel, b: LoadedModel, modules: Sequence[str] = LINEAR_MODULES
) -> dict[ModuleKey, torch.Tensor]:
    """``W_a - W_b`` (``[d_out, d_in]``, float32 at least) for each linear module ``modules`` of every decoder block,
    keyed by ``(layer, module)``. ``ModelMismatchError`` if the models differ in blocks or in a weight's shape."""
    wa, wb = block_weights(a, modules), block_weights(b, modules)
    if wa.keys() != wb.keys():
        raise ModelMismatchError(f"{a.name} and {b.name} differ in their decoder blocks ({a.n_layers} vs {b.n_layers})")
    for key in wa:
        if wa[key].shape != wb[key].shape:
            raise ModelMismatchError(
                f"{a.name} and {b.name} differ in the shape of block {key[0]} {key[1]}: "
                f"{tuple(wa[key].shape)} vs {tuple(wb[key].shape)}"
            )
    return {key: wa[key] - wb[key].to(wa[key].device, wa[key].dtype) for key in wa}


def with_weights(model: LoadedModel, weights: Mapping[ModuleKey, torch.Tensor], name: str) -> LoadedModel:
    """A new ``LoadedModel``: a copy of ``model`` with the block linear weights ``weights`` (cast to the model's
    dtype); ``model`` itself is untouched."""
    hf = copy.deepcopy(model.hf)
    linears = block_linears(hf, sorted({module for _, module in weights}))
    with torch.no_grad():
        for key, weight in weights.items():
            target = linears[key].weight
            target.copy_(weight.to(target.device, target.dtype))
    return model.with_hf(hf, name=name)


def _check_models(finetuned: LoadedModel, *others: LoadedModel) -> None:
    for other in others:
        check_pair(other, finetuned, what=f"{other.name} and {finetuned.name}")


# ----------------------------------------------------------------------------- interpolation and RESTA
def interpolate(finetuned: LoadedModel, aligned: LoadedModel, t: float) -> LoadedModel:
    """``(1 - t) W_ft + t W_aligned`` on every block linear weight: ``t = 0`` is the fine-tuned model and ``t = 1``
    the aligned one (the module docstring)."""
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"interpolation t must be in [0, 1], got {t}")
    _check_models(finetuned, aligned)
    ft, al = block_weights(finetuned), block_weights(aligned)
    mixed = {key: (1.0 - t) * ft[key] + t * al[key].to(ft[key].device) for key in ft}
    return with_weights(finetuned, mixed, name=f"interpolate(t={t:g}) of {finetuned.name}")


def dare_mask(shape: torch.Size, p: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's keep mask, ``[*shape]``, float: 1 with probability ``1 - p`` (each element drawn independently from
    ``generator``), else 0."""
    return (torch.rand(shape, generator=generator) >= p).float()


def resta(
    finetuned: LoadedModel,
    aligned: LoadedModel,
    unaligned: LoadedModel,
    beta: float,
    *,
    dare: float | None = None,
    seed: int = 0,
) -> LoadedModel:
    """RESTA: ``W_ft + beta (W_aligned - W_unaligned)`` on every block linear weight; with ``dare = p``, the task
    update ``W_ft - W_aligned`` is first DARE-sparsified (each element dropped with probability ``p``, the rest
    rescaled by ``1 / (1 - p)``; the draws come from a generator seeded with ``seed``, module by module in block
    order). The module docstring has the formula and how the paper differs."""
    if dare is not None and not 0.0 <= dare < 1.0:
        raise ConfigError(f"DARE's drop rate must be in [0, 1), got {dare}")
    _check_models(finetuned, aligned, unaligned)
    ft = block_weights(finetuned)
    safety = weight_deltas(aligned, unaligned)
    task = weight_deltas(finetuned, aligned) if dare is not None else {}
    generator = torch.Generator().manual_seed(seed)
    restored = {}
    for key in ft:
        weight = ft[key]
        if dare is not None:
            keep = dare_mask(task[key].shape, dare, generator).to(weight.device, weight.dtype)
            weight = weight + (keep / (1.0 - dare) - 1.0) * task[key].to(weight.device)
        restored[key] = weight + beta * safety[key].to(weight.device, weight.dtype)
    label = f"resta(beta={beta:g}" + (f", dare={dare:g}, seed={seed}" if dare is not None else "") + ")"
    return with_weights(finetuned, restored, name=f"{label} of {finetuned.name}")


# ----------------------------------------------------------------------------- Safe LoRA
def alignment_factor(
    v: torch.Tensor, projection: Projection = "released", *, rank: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """``A`` with Safe LoRA's ``C = A A^T``, float64, from the alignment vector ``v`` ``[d_out, d_in]``:
    ``released``: ``A = v / sqrt(||v||_F)`` ``[d_out, d_in]`` (so ``C = v v^T / ||v||_F``); ``exact``: ``A = U_k``
    ``[d_out, k]``, the left singular vectors of ``v`` with singular values above ``noise`` (or the top ``rank``),
    so that ``C`` is the orthogonal projector onto ``v``'s column space. No columns for ``v = 0`` (``C = 0``)."""
    if projection not in PROJECTIONS:
        raise ConfigError(f"projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
    v = v.detach().to(torch.float64)
    if projection == "released":
        norm = torch.linalg.matrix_norm(v)  # Frobenius
        return v / norm.sqrt() if norm > 0 else v[:, :0]
    u, s, _ = torch.linalg.svd(v, full_matrices=False)
    k = int((s > noise).sum()) if rank is None else min(rank, int((s > 0).sum()))
    return u[:, :k]


def alignment_projection(
    v: torch.Tensor, projection: Projection = "released", *, rank: int | None = None, noise: float = 0.0
) -> torch.Tensor:
    """Safe LoRA's ``C = A A^T`` (``alignment_factor``), ``[d_out, d_out]`` float64: ``released``:
    ``v v^T / ||v||_F``; ``exact``: the orthogonal projector ``U_k U_k^T`` onto ``v``'s column space."""
    a = alignment_factor(v, projection, rank=rank, noise=noise)
    return a @ a.T


def projected_cosine(factor: torch.Tensor, dw: torch.Tensor) -> float:
    """``<C dW, dW>_F / (||C dW||_F ||dW||_F)`` for ``C = factor factor^T`` (``factor`` ``[d_out, k]``, ``dw``
    ``[d_out, d_in]``), in float64: 1 for ``dW = 0`` (nothing to project), 0 for ``C dW = 0`` with ``dW != 0``.

    Computed as ``||A^T dW||^2 / (||A A^T dW|| ||dW||)`` (``<C dW, dW> = ||A^T dW||^2``): an update orthogonal to
    the alignment subspace then gets a cosine at rounding level, where the inner product of two vectors that are
    both rounding noise would give any value."""
    a, dw = factor.to(torch.float64), dw.detach().to(torch.float64)
    norm_dw = torch.linalg.matrix_norm(dw)
    if norm_dw == 0:
        return 1.0
    inner = a.T @ dw  # [k, d_in]
    norm_inner = torch.linalg.matrix_norm(inner)
    if norm_inner == 0:
        return 0.0
    return float(norm_inner.square() / (torch.linalg.matrix_norm(a @ inner) * norm_dw))


def rounding_bound(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> float:
    """An upper bound on the spectral norm of the rounding error of ``a - b`` for weights stored in ``dtype``:
    ``u (||a||_F + ||b||_F)``, ``u`` the unit roundoff (half the machine epsilon). Singular values of the difference
    below it cannot be told from rounding."""
    unit = torch.finfo(dtype).eps / 2
    return unit * float(torch.linalg.matrix_norm(a.double()) + torch.linalg.matrix_norm(b.double()))


@dataclass
class SafeLoraResult:
    """What ``safe_lora`` made: the model, the per-module cosines (``cos(C dW, dW)``), the modules it projected (lowest
    cosine first), the cosine threshold ``tau`` it used (``cos <= tau`` projected) and the projection."""

    model: LoadedModel
    cosines: dict[ModuleKey, float]
    projected: tuple[ModuleKey, ...]
    threshold: float
    projection: str

    def layer_map(self) -> np.ndarray:
        """``cosine_layer_map`` of the cosines: ``[n_layers]``."""
        return cosine_layer_map(self.cosines, self.model.n_layers)


def _safe_lora_parts(finetuned, aligned, unaligned, projection: Projection, rank: int | None):
    """Safe LoRA's per-module factor ``A`` (``C = A A^T``, made on demand: no store of them all), the task deltas
    ``dW`` and the aligned weights."""
    _check_models(finetuned, aligned, unaligned)
    safety, task = weight_deltas(aligned, unaligned), weight_deltas(finetuned, aligned)  # V and dW
    al, un = block_weights(aligned), block_weights(unaligned)
    stored = [{key: m.weight.dtype for key, m in block_linears(model.hf).items()} for model in (aligned, unaligned)]

    def factor(key: ModuleKey) -> torch.Tensor:
        coarser = max(stored[0][key], stored[1][key], key=lambda dtype: torch.finfo(dtype).eps)
        noise = rounding_bound(al[key], un[key], coarser) if projection == "exact" else 0.0
        return alignment_factor(safety[key], projection, rank=rank, noise=noise)

    return factor, task, al


def safe_lora_cosines(
    finetuned: LoadedModel, aligned: LoadedModel, unaligned: LoadedModel, projection: Projection = "released"
) -> dict[ModuleKey, float]:
    """Safe LoRA's per-module cosine ``cos(C dW, dW)`` alone (no model is made): the input of ``cosine_layer_map``."""
    factor, task, _ = _safe_lora_parts(finetuned, aligned, unaligned, projection, None)
    return {key: projected_cosine(factor(key), task[key]) for key in task}


def safe_lora(
    finetuned: LoadedModel,
    aligned: LoadedModel,
    unaligned: LoadedModel,
    *,
    projection: Projection = "released",
    select: Literal["number", "threshold"] = "number",
    n_modules: int = 10,
    threshold: float = 0.5,
    rank: int | None = None,
) -> SafeLoraResult:
    """Safe LoRA: per block linear module, ``C`` from ``V = W_aligned - W_unaligned`` (``alignment_factor``),
    the cosine of ``C dW`` with ``dW = W_ft - W_aligned``, and ``W_aligned + C dW`` on the modules whose cosine is at
    most ``tau``: the ``n_modules``-th lowest cosine (``select="number"``, the release's default, 10) or ``threshold``
    (``select="threshold"``, the release's default 0.5). ``rank`` fixes the exact projector's rank (default: every
    singular direction above the subtraction's rounding, ``rounding_bound``). The module docstring has the formulas
    and what the release does differently."""
    if select not in SELECTIONS:
        raise ConfigError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    if select == "number" and n_modules < 0:
        raise ConfigError(f"n_modules must be >= 0, got {n_modules}")
    if rank is not None and rank < 0:
        raise ConfigError(f"rank must be >= 0, got {rank}")
    factor, task, al = _safe_lora_parts(finetuned, aligned, unaligned, projection, rank)
    cosines = {key: projected_cosine(factor(key), task[key]) for key in task}
    ranked = sorted(cosines, key=cosines.__getitem__)
    if select == "number":
        tau = cosines[ranked[min(n_modules, len(ranked)) - 1]] if n_modules > 0 else -math.inf
    else:
        tau = float(threshold)
    chosen = tuple(key for key in ranked if cosines[key] <= tau)
    new = {}
    for key in chosen:
        a, dw = factor(key).to(task[key].device), task[key].double()
        new[key] = al[key].double() + a @ (a.T @ dw)  # W_aligned + C dW
    label = f"safe-lora({projection}, " + (f"n={n_modules}" if select == "number" else f"tau={threshold:g}") + ")"
    model = with_weights(finetuned, new, name=f"{label} of {finetuned.name}")
    return SafeLoraResult(model=model, cosines=cosines, projected=chosen, threshold=tau, projection=projection)


def cosine_layer_map(cosines: Mapping[ModuleKey, float], n_layers: int | None = None) -> np.ndarray:
    """``[n_layers]``: the mean over a layer's modules of Safe LoRA's per-module cosines (``nan`` for a layer with
    none). A low value: the layer's task update lies mostly outside the alignment subspace, which is where Safe LoRA
    projects. ``n_layers`` defaults to the deepest layer named, plus one."""
    if n_layers is None:
        n_layers = 1 + max((layer for layer, _ in cosines), default=-1)
    sums, counts = np.zeros(n_layers), np.zeros(n_layers)
    for (layer, _), value in cosines.items():
        if not 0 <= layer < n_layers:
            raise ConfigError(f"cosine for layer {layer}, outside [0, {n_layers})")
        sums[layer] += value
        counts[layer] += 1
    with np.errstate(invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ----------------------------------------------------------------------------- Antidote
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
        _check_models(finetuned, aligned)
    pruned = {}
    base = block_weights(aligned, modules) if aligned is not None else {}
    for key, weight in block_weights(finetuned, modules).items():
        target = base[key].to(weight.device, weight.dtype) if aligned is not None else torch.zeros_like(weight)
        scores = (weight - target).abs() * norms[key].to(weight.device, weight.dtype)[None, :]
        pruned[key] = torch.where(wanda_prune_mask(scores, fraction, per), target, weight)
    label = f"antidote({fraction:g} per {per}{', task update' if aligned is not None else ''})"
    return with_weights(finetuned, pruned, name=f"{label} of {finetuned.name}")
