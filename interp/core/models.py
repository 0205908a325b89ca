"""Loaded models and base/fine-tuned pairs: a Hugging Face causal LM with its tokenizer, a weights
fingerprint, and a TransformerLens bridge booted on demand.

A ``LoadedModel`` is replaced, not mutated: code that changes weights (merging an adapter, say) makes a
new one with ``with_hf``, so its fingerprint and bridge always belong to its weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError, ModelLoadError, ModelMismatchError
from .bridge import BRIDGE_KEY_PART, boot_bridge
from .chat import ChatFormat
from .sources import hub_error, resolve_source

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)  # what --dtype takes; "auto" is ``compute_dtype(device)``


def compute_dtype(device: str | torch.device = "cpu") -> tuple[str, str]:
    """``(dtype, why)``: the dtype a study computes in on ``device``, and the reason in a few words.

    ``bfloat16`` where the device multiplies it fast (CUDA with bf16 support; a CPU with AMX-BF16 or
    AVX512-BF16 units, where torch's oneDNN matmuls run 7-10x faster than float32: see
    ``benchmarks/dtype_bench.py``), ``float32`` elsewhere (bf16 there is emulated and slower).
    bfloat16 keeps float32's range with an 8-bit mantissa: weights and matrix products run in it, while
    what must be exact (captured activations, log-probabilities, losses, optimizer state) is float32."""
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bfloat16", "CUDA device with bf16 support"
        return "float32", "CUDA device without bf16 support"
    if kind == "cpu":
        capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        units = [
            name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if capabilities.get(flag)
        ]
        if units:
            return "bfloat16", f"CPU with {' and '.join(units)}"
        return "float32", "CPU without bf16 matrix units"
    return "float32", f"{kind} device (no bf16 measured there)"


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> str | torch.dtype:
    """``dtype`` itself, or for ``"auto"`` the ``compute_dtype`` of ``device``; ``ConfigError`` for a name
    that is neither."""
    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        return compute_dtype(device)[0]
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    return dtype


# The linear modules of a Llama-style block, where LoRA adapters go.
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer set up for batched prompts: left padding and a pad token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:
        raise load_error(path, path, error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_error(source, path: str, error: Exception) -> Exception:
    """The named error for a failed ``from_pretrained``: a local folder's own problem (its first line), or
    for a hub id the offline hub (``hub_error``)."""
    if Path(path).exists():
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return ModelLoadError(f"cannot load the model folder {path}: {first}")
    return hub_error(str(source), error)


# ----------------------------------------------------------------------------- loaded models
def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_unembedding(hf: PreTrainedModel) -> None:
    """Make the unembedding's input contiguous before it is projected (once per model; copies keep it).

    ``logits_to_keep`` hands it a slice of the last positions, ``[batch, 1, d_model]`` with the stride of
    the whole sequence. On such an input torch's ``linear`` multiplies by the weight folded into one
    matrix only while the weight requires grad; frozen (a merged restoration, a loaded adapter) it runs a
    batched product that first copies the ``[d_vocab, d_model]`` weight once per row: 2.2 GB and 2.8 s for
    39 rows of SmolLM2, against 5 ms for the folded product. A contiguous copy of the slice costs nothing."""
    head = hf.get_output_embeddings()
    if head is not None and _contiguous_input not in head._forward_pre_hooks.values():
        head.register_forward_pre_hook(_contiguous_input)


@dataclass
class LoadedModel:
    """A Hugging Face causal LM with its tokenizer, and a TransformerLens bridge booted on demand."""

    name: str  # what the user asked for
    path: str  # the resolved folder or hub id
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    _bridge: object | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        contiguous_unembedding(self.hf)

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
    def dtype(self) -> str:
        """The weights' dtype, e.g. ``"bfloat16"`` (what the model computes in)."""
        return str(next(self.hf.parameters()).dtype).removeprefix("torch.")

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
        """The weights' ``model_fingerprint`` and the ``tokenizer_fingerprint`` in one hash, computed once:
        every cache and every layer map's "this map belongs to that model" check is keyed by it, so a
        changed weight, tokenizer or chat template never meets results made without the change."""
        if self._fingerprint is None:
            both = f"{model_fingerprint(self.hf)}:{tokenizer_fingerprint(self.tokenizer)}"
            self._fingerprint = hashlib.sha256(both.encode()).hexdigest()[:16]
        return self._fingerprint

    def check_token_ids(self, ids, what: str = "refusal token ids") -> None:
        """``ConfigError`` unless every id indexes the model's output vocabulary."""
        vocab = int(self.hf.config.vocab_size)
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < vocab)]
        if bad:
            raise ConfigError(f"{what} must be in [0, {vocab}) for {self.name}, got {bad[:5]}")

    def check_fits(self, prompts, chat, room: int = 0) -> None:
        """``ConfigError`` if a prompt, rendered with the chat format, plus ``room`` tokens to generate,
        is longer than the model's context window (``max_position_embeddings``)."""
        limit = getattr(self.hf.config, "max_position_embeddings", None)
        if not limit or not len(prompts):
            return
        lengths = [len(ids) for ids in chat.encode(self.tokenizer, prompts.instructions)]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] + room > limit:
            raise ConfigError(
                f"prompt set {prompts.name!r}: prompt {longest} is {lengths[longest]} tokens with the chat template"
                f"{f' (+{room} to generate)' if room else ''}, longer than {self.name}'s context window of {limit}"
            )

    def with_hf(self, hf: PreTrainedModel, name: str | None = None) -> LoadedModel:
        """A new ``LoadedModel`` for other weights (same tokenizer and path): fresh fingerprint, no bridge."""
        hf.eval()
        return LoadedModel(name=self.name if name is None else name, path=self.path, hf=hf, tokenizer=self.tokenizer)


# Config fields that name where, when or with what a model was saved, or how it was initialised or what a
# call returns, and not what its forward pass computes: left out of the fingerprint, so that a new
# transformers release (it writes its own version into every config) or another folder keeps the
# fingerprint of the same computation. The weights' dtype is in the weights' bytes.
NOT_COMPUTATION = frozenset(
    {
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "initializer_range",
    }
)


def computation_settings(config) -> dict:
    """The config's fields that change the forward pass: those that differ from the architecture's
    defaults (``to_diff_dict``: a field a new transformers release adds, at its default, changes nothing),
    less ``NOT_COMPUTATION`` and the private fields (a leading ``_``: the folder it came from, the
    attention implementation)."""
    return {k: v for k, v in config.to_diff_dict().items() if not k.startswith("_") and k not in NOT_COMPUTATION}


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the config's ``computation_settings`` and of every tensor of the state dict: its name,
    dtype, shape and every byte. Any change of any weight, a permutation included, or of a setting of the
    forward pass (``rope_theta``, ``rms_norm_eps``, ...) changes it; the same weights give the same
    fingerprint wherever they were saved or loaded, under any transformers version, and with or without
    a bridge booted on the model."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(computation_settings(config), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            tensor = param.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name.replace(BRIDGE_KEY_PART, '')}|{tensor.dtype}|{tuple(param.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what turns a chat into token ids: the tokenizer's full definition (vocabulary, merges,
    normalizer, pre-tokenizer; or the vocabulary of a slow tokenizer), its special and added tokens, and
    its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = {
        "definition": definition,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "added": sorted((i, str(t)) for i, t in tokenizer.added_tokens_decoder.items()),
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fresh_copy(model: LoadedModel) -> LoadedModel:
    """The same weights reloaded from ``model.path``: a plain HF model with no bridge booted on it."""
    return replace(load_model(model.path, dtype=model.hf.dtype, device=str(model.device)), name=model.name)


def parse_max_memory(text: str) -> dict:
    """``'0=70GiB,1=70GiB,cpu=200GiB'`` -> ``{0: '70GiB', 1: '70GiB', 'cpu': '200GiB'}`` (accelerate's
    ``max_memory``: GPU index or ``cpu``/``disk`` -> a size)."""
    out: dict = {}
    for item in text.split(","):
        name, sep, size = (part.strip() for part in item.partition("="))
        if not sep or not name or not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", size, re.IGNORECASE):
            raise ConfigError(f"--max-memory {text!r}: each entry is DEVICE=SIZE, e.g. 0=70GiB or cpu=200GiB")
        if not (name.isdigit() or name in ("cpu", "disk")):
            raise ConfigError(f"--max-memory {text!r}: device {name!r} is neither a GPU index nor cpu/disk")
        out[int(name) if name.isdigit() else name] = size
    return out


def check_quantize(bits: str) -> None:
    """``4bit``/``8bit`` loading needs bitsandbytes and CUDA: one line naming what is missing."""
    if bits not in ("4bit", "8bit"):
        raise ConfigError(f"quantize must be 4bit or 8bit, got {bits!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--quantize {bits} needs CUDA (bitsandbytes kernels); this machine has no CUDA device")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"--quantize {bits} needs bitsandbytes: pip install bitsandbytes") from None


def load_model(
    source: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | None = None,
    max_memory: dict | None = None,
    quantize: str | None = None,
) -> LoadedModel:
    """Load a model by name (``interp.core.sources``) with a batch-ready tokenizer, its weights in
    ``dtype`` (``"auto"``: ``compute_dtype(device)``; the fingerprint covers the weights' bytes, so every
    cache key and layer map tells the dtypes apart). ``device_map``
    (``auto``) spreads a large model over the devices, within ``max_memory``; ``quantize`` (``4bit``,
    ``8bit``) loads the weights through bitsandbytes (CUDA only), on ``device_map`` or else ``device``."""
    dtype = resolve_dtype(dtype, device)
    path = resolve_source(source)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    kwargs: dict = {"dtype": torch_dtype}
    if quantize is not None:
        check_quantize(quantize)
        from transformers import BitsAndBytesConfig

        bits = {"load_in_4bit": True, "bnb_4bit_compute_dtype": torch_dtype} if quantize == "4bit" else {}
        kwargs["quantization_config"] = BitsAndBytesConfig(**(bits or {"load_in_8bit": True}))
        device_map = device_map or {"": device}
    if max_memory is not None:
        if device_map is None:
            raise ConfigError("max_memory needs a device_map (it bounds how the map spreads the model)")
        kwargs["max_memory"] = max_memory
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as error:  # safetensors, json and torch raise their own kinds for a damaged folder
        raise load_error(source, path, error) from error
    if device_map is None:
        model = model.to(device)
    model.eval()
    with torch.no_grad():
        bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ModelLoadError(f"{source}: the weights hold NaN or infinite values (first in {bad})")
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


def check_pair(base: LoadedModel, finetuned: LoadedModel, what: str = "base and fine-tuned models") -> None:
    """Raise ``ModelMismatchError`` naming the first value that differs between the two models:
    architecture, layers, width, tokenizer vocabulary, special tokens, chat template; ``ConfigError`` if
    they have no chat template (``ChatFormat.check``)."""
    for model in (base, finetuned):
        ChatFormat.check(model.tokenizer, model.name)

    def arch(m: LoadedModel) -> str:
        return ",".join(m.hf.config.architectures or [type(m.hf).__name__])

    checks = [
        ("architecture", arch(base), arch(finetuned)),
        ("number of layers", base.n_layers, finetuned.n_layers),
        ("d_model", base.d_model, finetuned.d_model),
        ("tokenizer vocabulary size", len(base.tokenizer), len(finetuned.tokenizer)),
    ]
    for quantity, a, b in checks:
        if a != b:
            raise ModelMismatchError(f"{what} differ in {quantity}: {a} vs {b}")
    vocab_a, vocab_b = base.tokenizer.get_vocab(), finetuned.tokenizer.get_vocab()
    if vocab_a != vocab_b:
        differing = sorted(set(vocab_a.items()) ^ set(vocab_b.items()))[:3]
        raise ModelMismatchError(f"{what} differ in tokenizer vocabulary (e.g. {differing})")
    special_a, special_b = base.tokenizer.special_tokens_map, finetuned.tokenizer.special_tokens_map
    for name in sorted((set(special_a) | set(special_b)) - {"pad_token"}):  # padding is masked out
        if special_a.get(name) != special_b.get(name):
            raise ModelMismatchError(
                f"{what} differ in the special token {name}: {special_a.get(name)!r} vs {special_b.get(name)!r}"
            )
    template_a, template_b = base.tokenizer.chat_template, finetuned.tokenizer.chat_template
    if template_a != template_b:
        a_text, b_text = str(template_a), str(template_b)
        at = next((i for i, (x, y) in enumerate(zip(a_text, b_text)) if x != y), min(len(a_text), len(b_text)))
        raise ModelMismatchError(
            f"{what} differ in their chat templates (from character {at}: "
            f"{a_text[at : at + 40]!r} vs {b_text[at : at + 40]!r}): the same prompt would be other tokens in each; "
            "give both folders one template"
        )


def load_pair(base: str | Path, finetuned: str | Path, **kwargs) -> ModelPair:
    return ModelPair(load_model(base, **kwargs), load_model(finetuned, **kwargs))
