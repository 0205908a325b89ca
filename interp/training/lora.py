"""LoRA adapters: where they go, how they are saved, and merging them into a new ``LoadedModel``.

A TransformerBridge booted on a peft model wraps its modules, and the saved keys then contain
``._original_component``; a plain model would load such an adapter as nothing, silently. Adapters are
therefore always saved here, with those key parts removed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..core.bridge import BRIDGE_KEY_PART
from ..core.models import LoadedModel
from ..core.sources import save_hf_folder
from ..errors import ConfigError, ModelMismatchError
from ..io.atomic import atomic_dir


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


TRAINED_ON = "interp_trained_on"  # the adapter file's metadata: the fingerprint of the model it was trained on
TRAINED_DTYPE = "interp_trained_dtype"  # ... and the dtype of that model's weights


def save_adapter(model: PeftModel, folder: str | Path, trained_on: str | None = None) -> Path:
    """Save the adapter in peft's format, loadable with ``PeftModel.from_pretrained`` on a plain HF model;
    ``trained_on`` (the fingerprint of the model under the adapter) goes into the weights file's metadata,
    so ``apply_adapter`` can refuse to put it on another model."""
    folder = Path(folder)
    with atomic_dir(folder, marker="adapter_config.json") as tmp:
        model.save_pretrained(tmp)
        weights = load_file(str(tmp / "adapter_model.safetensors"))
        cleaned = {key.replace(BRIDGE_KEY_PART, ""): value for key, value in weights.items()}
        dtype = str(next(model.get_base_model().parameters()).dtype).removeprefix("torch.")
        metadata = {"format": "pt"} | ({TRAINED_ON: trained_on, TRAINED_DTYPE: dtype} if trained_on else {})
        save_file(cleaned, str(tmp / "adapter_model.safetensors"), metadata=metadata)
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("target_modules"), list):
            config["target_modules"] = sorted({m.replace(BRIDGE_KEY_PART, "") for m in config["target_modules"]})
        config_path.write_text(json.dumps(config, indent=2))
    return folder


def merged(model: LoadedModel, peft_model: PeftModel, name: str | None = None) -> LoadedModel:
    """A new ``LoadedModel`` with ``peft_model``'s adapter merged into the weights (``peft_model`` is used up)."""
    return model.with_hf(peft_model.merge_and_unload(), name=name)


def adapter_trained_on(adapter: str | Path) -> tuple[str | None, str | None]:
    """``(fingerprint, dtype)`` of the model a saved adapter was trained on (``save_adapter``), ``None``
    where the adapter does not say (saved by peft itself or by an older interp)."""
    weights = Path(adapter) / "adapter_model.safetensors"
    if not weights.is_file():
        return None, None
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 (safetensors raises its own kind for a damaged file)
        raise ConfigError(f"adapter {adapter}: {weights.name} cannot be read ({str(error)[:120]})") from None
    return metadata.get(TRAINED_ON), metadata.get(TRAINED_DTYPE)


def check_adapter(model: LoadedModel, adapter: str | Path, warn=None) -> None:
    """``ModelMismatchError`` if ``adapter`` was trained on other weights than ``model``'s (naming the
    dtype when that is what differs); an adapter that does not say is applied with a warning."""
    trained_on, dtype = adapter_trained_on(adapter)
    if trained_on is None:
        message = f"adapter {adapter} does not say which model it was trained on; applied to {model.name} unchecked"
        (warn or (lambda line: print(f"interp: warning: {line}", file=sys.stderr)))(message)
        return
    if trained_on == model.fingerprint:
        return
    ours = str(next(model.hf.parameters()).dtype).removeprefix("torch.")
    if dtype is not None and dtype != ours:
        raise ModelMismatchError(
            f"adapter {adapter} was trained on {dtype} weights and {model.name} is loaded in {ours}: load it with "
            f"--dtype {dtype} (the fingerprint covers the weights' bytes)"
        )
    raise ModelMismatchError(
        f"adapter {adapter} was trained on the model with fingerprint {trained_on}, not on {model.name} "
        f"({model.fingerprint}): it would change weights it was never trained with"
    )


def apply_adapter(model: LoadedModel, adapter: str | Path, name: str | None = None) -> LoadedModel:
    """``model``'s weights with a saved adapter merged in, as a new ``LoadedModel``, after ``check_adapter``
    (``model.hf`` is used up: pass a fresh copy if the original is still needed)."""
    check_adapter(model, adapter)
    return merged(model, PeftModel.from_pretrained(model.hf, adapter), name=name)


def save_merged(peft_model: PeftModel, tokenizer, folder: str | Path) -> Path:
    """Merge the adapter into a copy of the weights and save a plain Hugging Face folder."""
    return save_hf_folder(copy.deepcopy(peft_model).merge_and_unload(), tokenizer, folder)


def adapter_state(peft_model: PeftModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's state-dict format, rounded to ``dtype`` (bridge key parts removed)."""
    state = get_peft_model_state_dict(peft_model)
    return {key.replace(BRIDGE_KEY_PART, ""): value.detach().to(dtype).contiguous() for key, value in state.items()}


def merge_adapter_state(
    model: LoadedModel, state: dict[str, torch.Tensor], lora: LoraConfig, name: str | None = None
) -> LoadedModel:
    """``model``'s weights with the adapter ``state`` (``adapter_state``) merged in, as a new ``LoadedModel``
    (``model.hf`` is used up). The weights are cast to the model's dtype first: the one way an adapter is
    merged, so a trained adapter and the same adapter read from a file give identical weights."""
    peft_model = get_peft_model(model.hf, lora)
    dtype = next(model.hf.parameters()).dtype
    result = set_peft_model_state_dict(peft_model, {k: v.to(dtype) for k, v in state.items()})
    if result.unexpected_keys:
        raise ValueError(f"adapter keys not in the model: {result.unexpected_keys[:3]}")
    return merged(model, peft_model, name=name)
