"""Published weight-space restoration methods, written here: interpolation toward the aligned model and RESTA
(this module), Safe LoRA (``interp.training.safe_lora``) and Antidote (``interp.training.antidote``). Each is a
function of checkpoints (Antidote also of harmful prompts) that returns a new ``LoadedModel`` and never changes its
inputs. This module also holds what the four share: the block linear weights, their deltas, a copy of a model
with new weights, and the check that the checkpoints fit together.

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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch

from ..core.bridge import decoder_layers
from ..core.models import LINEAR_MODULES, LoadedModel, check_pair
from ..errors import ConfigError, ModelMismatchError

ModuleKey = tuple[int, str]  # (decoder block, linear module name), e.g. (3, "q_proj")


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


def check_checkpoints(finetuned: LoadedModel, *others: LoadedModel) -> None:
    """Every other checkpoint has ``finetuned``'s shape (``interp.core.models.check_pair``), so their block linear
    weights can be added and subtracted."""
    for other in others:
        check_pair(other, finetuned, what=f"{other.name} and {finetuned.name}")


# ----------------------------------------------------------------------------- interpolation and RESTA
def interpolate(finetuned: LoadedModel, aligned: LoadedModel, t: float) -> LoadedModel:
    """``(1 - t) W_ft + t W_aligned`` on every block linear weight: ``t = 0`` is the fine-tuned model and ``t = 1``
    the aligned one (the module docstring)."""
    if not 0.0 <= t <= 1.0:
        raise ConfigError(f"interpolation t must be in [0, 1], got {t}")
    check_checkpoints(finetuned, aligned)
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
    check_checkpoints(finetuned, aligned, unaligned)
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
