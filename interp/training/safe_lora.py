"""Safe LoRA, a published weight-space restoration method, written here (the others: ``interp.training.peers``,
which also defines the terms used below: the checkpoints ``unaligned``, ``aligned`` and ``finetuned``, the block
linear weights ``W[l, m]``, ``[d_out, d_in]``, the alignment vector ``V = W_aligned - W_unaligned`` and the task
update ``dW = W_finetuned - W_aligned``). Like every method there it edits only the block linear weights, returns a
new ``LoadedModel`` and never changes its inputs; its projections are computed in float64.

Sources: the paper, its released code (with the commit read), and the peer survey ``shared/reviews/peers.md``
(beside the repository, "the survey" below), which read the released code.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..core.models import LoadedModel
from ..errors import ConfigError
from .peers import ModuleKey, block_linears, block_weights, check_checkpoints, weight_deltas, with_weights

Projection = Literal["released", "exact"]
PROJECTIONS = ("released", "exact")
SELECTIONS = ("number", "threshold")


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
    check_checkpoints(finetuned, aligned, unaligned)
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
