"""Loaded models and base/fine-tuned pairs: a Hugging Face causal LM with its tokenizer, a weights
fingerprint, and a TransformerLens bridge booted on demand.

A ``LoadedModel`` is replaced, not mutated: code that changes weights (merging an adapter, say) makes a
new one with ``with_hf``, so its fingerprint and bridge always belong to its weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ModelMismatchError
from .bridge import BRIDGE_KEY_PART, boot_bridge
from .sources import hub_error, resolve_source

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The linear modules of a Llama-style block, where LoRA adapters go.
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer set up for batched prompts: left padding and a pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise hub_error(path, error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


# ----------------------------------------------------------------------------- loaded models
@dataclass
class LoadedModel:
    """A Hugging Face causal LM with its tokenizer, and a TransformerLens bridge booted on demand."""

    name: str  # what the user asked for
    path: str  # the resolved folder or hub id
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    _bridge: object | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.hf.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def bridge(self):
        """The TransformerLens 4 ``TransformerBridge`` on a copy of this model (booted once).

        Booting rewires a model in place (eager attention, bridge modules in its forward), so it gets a
        copy: ``hf`` stays a plain Hugging Face model for generation and training."""
        if self._bridge is None:
            self._bridge = boot_bridge(copy.deepcopy(self.hf), self.tokenizer, self.path)
        return self._bridge

    @property
    def fingerprint(self) -> str:
        """``model_fingerprint`` of the weights, computed once."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.hf)
        return self._fingerprint

    def with_hf(self, hf: PreTrainedModel, name: str | None = None) -> LoadedModel:
        """A new ``LoadedModel`` for other weights (same tokenizer and path): fresh fingerprint, no bridge."""
        hf.eval()
        return LoadedModel(name=self.name if name is None else name, path=self.path, hf=hf, tokenizer=self.tokenizer)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the config (without where it was loaded from) and a sample of every weight tensor: the
    same weights give the same fingerprint wherever they were saved or loaded."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            flat = param.detach().reshape(-1).float().cpu()
            digest.update(name.replace(BRIDGE_KEY_PART, "").encode())  # same before and after a bridge
            digest.update(str(tuple(param.shape)).encode())
            digest.update(flat[:2048].numpy().tobytes())
            digest.update(flat[-2048:].numpy().tobytes())
            digest.update(f"{flat.double().sum().item():.10e}".encode())
    return digest.hexdigest()[:16]


def fresh_copy(model: LoadedModel) -> LoadedModel:
    """The same weights reloaded from ``model.path``: a plain HF model with no bridge booted on it."""
    return replace(load_model(model.path, dtype=model.hf.dtype, device=str(model.device)), name=model.name)


def load_model(
    source: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | None = None,
) -> LoadedModel:
    """Load a model by name (``interp.core.sources``) with a batch-ready tokenizer."""
    path = resolve_source(source)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    kwargs: dict = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        raise hub_error(str(source), error) from error
    if device_map is None:
        model = model.to(device)
    model.eval()
    return LoadedModel(name=str(source), path=path, hf=model, tokenizer=load_tokenizer(path))


# ----------------------------------------------------------------------------- pairs
@dataclass
class ModelPair:
    """An aligned base model and its fine-tuned descendant, checked to be comparable."""

    base: LoadedModel
    finetuned: LoadedModel

    def __post_init__(self) -> None:
        check_pair(self.base, self.finetuned)

    @property
    def n_layers(self) -> int:
        return self.base.n_layers


def check_pair(base: LoadedModel, finetuned: LoadedModel) -> None:
    """Raise ``ModelMismatchError`` naming the first value that differs between the two models."""

    def arch(m: LoadedModel) -> str:
        return ",".join(m.hf.config.architectures or [type(m.hf).__name__])

    checks = [
        ("architecture", arch(base), arch(finetuned)),
        ("number of layers", base.n_layers, finetuned.n_layers),
        ("d_model", base.d_model, finetuned.d_model),
        ("tokenizer vocabulary size", len(base.tokenizer), len(finetuned.tokenizer)),
    ]
    for what, a, b in checks:
        if a != b:
            raise ModelMismatchError(f"base and fine-tuned models differ in {what}: {a} vs {b}")
    vocab_a, vocab_b = base.tokenizer.get_vocab(), finetuned.tokenizer.get_vocab()
    if vocab_a != vocab_b:
        differing = sorted(set(vocab_a.items()) ^ set(vocab_b.items()))[:3]
        raise ModelMismatchError(f"base and fine-tuned models differ in tokenizer vocabulary (e.g. {differing})")


def load_pair(base: str | Path, finetuned: str | Path, **kwargs) -> ModelPair:
    return ModelPair(load_model(base, **kwargs), load_model(finetuned, **kwargs))
