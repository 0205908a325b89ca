"""A plan before the run: what each stage of a study on a pair will need, from the models' configs alone.

No weights are loaded: the shapes come from each model's ``config.json`` (``ModelShape``). Per stage
(``plan``), with the stage settings of a study (``PlanSettings``):

* **weights**: ``params * bytes(dtype)`` per model held; parameters counted from the shapes
  (embedding ``V d``, an untied unembedding ``V d``, per block ``d (h + 2 kv) hd + h hd d`` for attention
  plus biases where the architecture has them, ``3 d m`` for the gated MLP, two norms ``2 d``; the final
  norm ``d``);
* **analyze**: the residual captures, ``float32`` ``[prompt, layer, position, d]`` per model and set
  (exactly what ``interp.measures.capture`` allocates), and its forward passes (captures, the causal
  sweep, the direction selection);
* **restore**: one copy of the fine-tuned weights per plan trained in lockstep, plus the teacher and
  the frozen model; LoRA parameters ``r (in + out)`` per adapted module (what peft adds), kept with
  their gradient and AdamW's two moments in float32 (16 bytes each); the activations kept for the
  backward pass, estimated as ``ACTIVATION_FACTOR`` vectors of ``d`` per token per block above the lowest
  adapted block in the model's dtype (an estimate: gradient checkpointing is not used);
* **evaluate**: every row's model, held at once (as ``evaluate_models`` holds its candidates), the
  key-value cache of one generation batch, ``2 L batch kv hd (prompt + budget)``
  elements in the model's dtype (what ``interp.core.kvcache`` preallocates), and the generated tokens
  (an upper bound: every answer runs to its budget).

**Several processes** (``processes`` N, ``interp.distributed``): the figures are per process. Data parallel:
every process holds every model, its 1/N of each batch's rows (the restoration's activations / N) and
the gathered captures. With ``fsdp`` each student's blocks are sharded: a student holds 1/N of its block
weights (the rest of the model whole) and 1/N of its LoRA weights, gradients and AdamW moments (rounded
up per tensor, so a little more); the teacher and the frozen model stay whole. Times are divided by N
(ideal scaling: N devices that do not share compute).

**Time** (``Calibration``): one block of the target's own shape (one layer, ``d``, ``m``, heads as in the
config; a small vocabulary) is built on this device in the target dtype, and a prefill and a few decode
steps are timed; a stage's estimate is its block-token count times the measured seconds per block-token
(prefill and training, training counted as 3 forwards) plus its decode steps times the measured seconds
per block-step, scaled up linearly from the calibration batch to the generation batch (compute-bound).
The unembedding and everything outside the blocks is left out. It is an estimate of the order of
magnitude, printed as such.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError
from .evaluation.suite import EvalConfig
from .training.restore_config import RestoreConfig

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ACTIVATION_FACTOR = 34  # d-sized tensors kept per token and block for the backward pass (attention + MLP)
ADAM_BYTES = 16  # float32 weight, gradient and two moments per LoRA parameter
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CALIBRATION_BYTES = 4 << 30  # the largest block the time calibration builds


REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
# Sizes past these are no model this suite can plan for (and a typo away from a 16 TB calibration block).
LIMITS = {
    "num_hidden_layers": 1024,
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "head_dim": 4096,
    "vocab_size": 1 << 23,
}


def check_sizes(config: dict, where: str) -> None:
    """``ConfigError`` unless every size a plan reads is a whole number in ``[1, LIMITS]``, the heads
    divide the width and the key/value heads divide the heads."""
    for key, limit in LIMITS.items():
        if key not in config or config[key] is None:
            continue
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise ConfigError(f"plan: {where}: {key} must be a whole number in [1, {limit:,}], got {value!r}")
    heads = config["num_attention_heads"]
    if config["hidden_size"] % heads:
        raise ConfigError(f"plan: {where}: hidden_size {config['hidden_size']} is not a multiple of {heads} heads")
    kv_heads = config.get("num_key_value_heads")
    if kv_heads and heads % kv_heads:
        raise ConfigError(f"plan: {where}: {heads} heads are not a multiple of {kv_heads} key/value heads")


@dataclass(frozen=True)
class ModelShape:
    """What a plan needs of a decoder-only transformer, read off its config."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a ``transformers`` config (Llama, Qwen2, Mistral and their kind)."""
        try:
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            attention_bias = bool(getattr(config, "attention_bias", False))
            return cls(
                n_layers=config.num_hidden_layers,
                d_model=config.hidden_size,
                d_mlp=config.intermediate_size,
                n_heads=heads,
                n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                head_dim=head_dim,
                d_vocab=config.vocab_size,
                tied=bool(getattr(config, "tie_word_embeddings", False)),
                qkv_bias=attention_bias or config.model_type == "qwen2",
                o_bias=attention_bias,
                mlp_bias=bool(getattr(config, "mlp_bias", False)),
            )
        except AttributeError as error:
            raise ConfigError(f"cannot plan for a {config.model_type!r} config: {error}") from None

    @classmethod
    def load(cls, source: str | Path) -> ModelShape:
        """From a folder with ``config.json``, a ``config.json`` file, or a hub id whose config is cached
        (weights are never read). The sizes a plan needs must be written in the config itself
        (``REQUIRED``: an architecture's defaults would plan another model) and be sane
        (``check_sizes``)."""
        from transformers import AutoConfig, PretrainedConfig

        path = Path(source)
        file = path if path.is_file() else path / "config.json"
        if file.is_file():
            try:
                written = json.loads(file.read_text())
            except (OSError, ValueError) as error:
                raise ConfigError(f"plan: {file} is not readable JSON ({type(error).__name__})") from None
            if not isinstance(written, dict):
                raise ConfigError(f"plan: {file} holds a {type(written).__name__}, not a config object")
            missing = [key for key in REQUIRED if key not in written]
            if missing:
                raise ConfigError(f"plan: {file} does not give {', '.join(missing)}; a plan needs every size written")
            check_sizes(written, str(file))
        try:
            if path.is_file():
                return cls.from_config(PretrainedConfig.from_json_file(str(path)))
            return cls.from_config(AutoConfig.from_pretrained(str(source)))
        except Exception as error:  # noqa: BLE001 (transformers validates configs with errors of its own)
            first = str(error).strip().splitlines()[-1][:200] if str(error).strip() else type(error).__name__
            raise ConfigError(f"plan: no readable config for {source} ({first})") from None

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` features of each adaptable linear module of one block."""
        d, hd = self.d_model, self.head_dim
        return {
            "q_proj": (d, self.n_heads * hd),
            "k_proj": (d, self.n_kv_heads * hd),
            "v_proj": (d, self.n_kv_heads * hd),
            "o_proj": (self.n_heads * hd, d),
            "gate_proj": (d, self.d_mlp),
            "up_proj": (d, self.d_mlp),
            "down_proj": (self.d_mlp, d),
        }

    def block_params(self) -> int:
        shapes = self.module_shapes()
        weights = sum(i * o for i, o in shapes.values())
        biases = self.qkv_bias * sum(shapes[m][1] for m in ("q_proj", "k_proj", "v_proj"))
        biases += self.o_bias * self.d_model + self.mlp_bias * (2 * self.d_mlp + self.d_model)
        return weights + biases + 2 * self.d_model

    def params(self) -> int:
        embed = self.d_vocab * self.d_model
        return embed * (1 if self.tied else 2) + self.n_layers * self.block_params() + self.d_model

    def lora_params(self, rank: int, layers: int, modules=MODULES) -> int:
        """LoRA parameters of rank ``rank`` on ``modules`` of ``layers`` blocks."""
        shapes = self.module_shapes()
        return layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in modules)

    def kv_cache_elements(self, batch: int, positions: int) -> int:
        return 2 * self.n_layers * batch * self.n_kv_heads * self.head_dim * positions


@dataclass(frozen=True)
class PlanSettings:
    """The stage settings a plan counts with (the study's defaults: ``RestoreConfig``, ``EvalConfig``, the
    full suite's 1,149 prompts and eight rows; ``interp plan`` flags change them)."""

    dtype: str = "float32"
    prompt_tokens: int = 96  # a prompt's tokens with the chat template (longest in a batch)
    analysis_prompts: dict = field(default_factory=lambda: {"harmful": 260, "harmless": 260, "task": 160})
    positions: int = 5
    causal_prompts: int = 16
    selection_prompts: int = 16
    plans: int = 5  # placements trained in lockstep (ranked, all layers, random, bottom, components)
    steps: int = RestoreConfig.steps
    batch_size: int = RestoreConfig.batch_size
    rank: int = RestoreConfig.rank
    lora_layers: int = 3  # blocks with LoRA in a ranked plan (the all-layer plan: every block)
    eval_prompts: int = 1149
    eval_models: int = 8
    max_new_tokens: int = EvalConfig.max_new_tokens
    generation_batch: int = EvalConfig.batch_size
    processes: int = 1  # data-parallel processes (accelerate launch --num_processes)
    fsdp: bool = False  # the restoration's students sharded over the processes

    def __post_init__(self) -> None:
        if self.dtype not in BYTES:
            raise ConfigError(f"plan: dtype must be one of {', '.join(BYTES)}, got {self.dtype!r}")
        numbers = [v for k, v in vars(self).items() if isinstance(v, int) and not isinstance(v, bool)]
        if min(numbers) < 1 or min(self.analysis_prompts.values()) < 1:
            raise ConfigError("plan: every count must be >= 1")


@dataclass(frozen=True)
class Calibration:
    """Seconds per block-token of a prefill and per block-step of batched decoding, measured here."""

    device: str
    dtype: str
    prefill: float  # seconds per token and block
    decode: float  # seconds per decode step and block, at the calibration batch
    batch: int
    load: float  # the 1-minute load average when measured

    @classmethod
    @torch.no_grad()
    def measure(cls, shape: ModelShape, device: str = "cpu", dtype: str = "float32", batch: int = 8) -> Calibration:
        """Time one block of ``shape`` (a prefill of ``batch`` x 64 tokens, then 8 decode steps); a block
        larger than ``CALIBRATION_BYTES`` is refused before it is built (``ConfigError``)."""
        size = shape.block_params() * BYTES[dtype]
        if size > CALIBRATION_BYTES:
            raise ConfigError(
                f"plan: timing one block of this model would build {size / 2**30:.1f} GiB, more than the "
                f"{CALIBRATION_BYTES / 2**30:.0f} GiB the calibration may use; plan with --no-calibration"
            )
        import os

        from transformers import LlamaConfig, LlamaForCausalLM

        from .core.kvcache import kv_cache

        config = LlamaConfig(
            hidden_size=shape.d_model,
            intermediate_size=shape.d_mlp,
            num_hidden_layers=1,
            num_attention_heads=shape.n_heads,
            num_key_value_heads=shape.n_kv_heads,
            head_dim=shape.head_dim,
            vocab_size=256,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()
        ids = torch.randint(0, 256, (batch, 64), device=device)
        model(input_ids=ids[:1, :8])  # warm up
        start = time.perf_counter()
        cache = kv_cache(64 + 8, None, batch)
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        prefill = (time.perf_counter() - start) / ids.numel()
        start = time.perf_counter()
        for step in range(8):
            model(input_ids=ids[:, step : step + 1], cache=cache, use_cache=True)
        decode = (time.perf_counter() - start) / 8
        return cls(device, dtype, prefill, decode, batch, os.getloadavg()[0])


@dataclass
class StageCost:
    """One stage of the plan."""

    stage: str
    memory: dict[str, int]  # bytes by what holds them
    forwards: int  # forward passes over a prompt (prefills), all models
    block_tokens: int  # tokens times blocks run (training counted as 3 forwards)
    generated: int  # generated tokens (upper bound)
    decode_steps: int  # block-steps of batched decoding
    seconds: float | None = None

    @property
    def peak(self) -> int:
        return sum(self.memory.values())


def plan(
    base: ModelShape, finetuned: ModelShape, settings: PlanSettings = PlanSettings(), calibration=None
) -> list[StageCost]:
    """The cost of each stage of a study of the pair (module docstring)."""
    if (base.n_layers, base.d_model) != (finetuned.n_layers, finetuned.d_model):
        raise ConfigError("plan: the two models differ in depth or width; interp compares models of one shape")
    s, m = settings, finetuned
    weight = m.params() * BYTES[s.dtype]
    n_prompts = sum(s.analysis_prompts.values())
    captures = 2 * n_prompts * m.n_layers * s.positions * m.d_model * 4
    sweep = m.n_layers * s.causal_prompts * 3  # patch, and patched components attention and MLP
    selection = int(0.8 * m.n_layers) * s.positions * 2 * s.selection_prompts
    analyze = StageCost(
        "analyze",
        {"weights (2 models)": 2 * weight, "residual captures": captures},
        forwards=2 * n_prompts + sweep + selection,
        block_tokens=(2 * n_prompts + sweep + selection) * s.prompt_tokens * m.n_layers,
        generated=0,
        decode_steps=0,
    )
    lora = m.lora_params(s.rank, s.lora_layers) * (s.plans - 1) + m.lora_params(s.rank, m.n_layers)
    tokens = s.batch_size * 2 * s.prompt_tokens  # a harmful and a retain batch per step
    rows = -(-tokens // s.processes)  # this process's share of the batch's tokens
    kept = rows * m.n_layers * m.d_model * ACTIVATION_FACTOR * BYTES[s.dtype]
    shards = s.processes if s.fsdp else 1
    blocks = m.n_layers * m.block_params() * BYTES[s.dtype]
    student = weight - blocks + -(-blocks // shards)
    restore = StageCost(
        "restore",
        {
            f"weights ({s.plans} students{' sharded' * s.fsdp})": s.plans * student,
            "weights (teacher, frozen)": 2 * weight,
            f"LoRA weights, gradients, AdamW{' sharded' * s.fsdp}": -(-lora * ADAM_BYTES // shards),
            "activations for the backward pass (estimate)": kept,
        },
        forwards=s.steps * s.batch_size * (2 + 2 * s.plans),
        block_tokens=s.steps * tokens * m.n_layers * (1 + 3 * s.plans),
        generated=0,
        decode_steps=0,
    )
    batch = min(s.generation_batch, s.eval_prompts)
    kv = m.kv_cache_elements(batch, s.prompt_tokens + s.max_new_tokens) * BYTES[s.dtype]
    batches = -(-s.eval_prompts // batch) * s.eval_models
    evaluate = StageCost(
        "evaluate",
        {
            f"weights ({s.eval_models} rows' models, held at once)": s.eval_models * weight,
            f"KV cache (batch {batch})": kv,
        },
        forwards=s.eval_prompts * s.eval_models,
        block_tokens=s.eval_prompts * s.eval_models * s.prompt_tokens * m.n_layers,
        generated=s.eval_prompts * s.eval_models * s.max_new_tokens,
        decode_steps=batches * s.max_new_tokens * m.n_layers,
    )
    stages = [analyze, restore, evaluate]
    if calibration is not None:
        per_step = calibration.decode * max(1.0, batch / calibration.batch)  # compute-bound: grows with the batch
        for stage in stages:
            seconds = stage.block_tokens * calibration.prefill + stage.decode_steps * per_step
            stage.seconds = seconds / s.processes
    return stages


def render(stages: list[StageCost], shape: ModelShape, settings: PlanSettings, calibration=None) -> str:
    """The plan as text: per stage, its memory items, passes, tokens and time estimate."""
    lines = [
        f"model: {shape.n_layers} layers, d_model {shape.d_model}, d_mlp {shape.d_mlp}, vocabulary {shape.d_vocab}, "
        f"{shape.params() / 1e9:.2f}B parameters, {settings.dtype}",
    ]
    if calibration is not None:
        lines.append(
            f"calibration on {calibration.device} ({calibration.dtype}, load {calibration.load:.2f}): "
            f"{calibration.prefill * 1e6:.1f} us per token and block (prefill), "
            f"{calibration.decode * 1e3:.1f} ms per decode step and block at batch {calibration.batch}"
        )
    if settings.processes > 1:
        kind = "FSDP for the restoration" if settings.fsdp else "data parallel"
        lines.append(f"{settings.processes} processes, {kind}: memory per process, time on that many devices")
    per_process = " per process" if settings.processes > 1 else ""
    for stage in stages:
        time_text = "" if stage.seconds is None else f", about {_duration(stage.seconds)} (estimate)"
        lines.append(
            f"\n{stage.stage}: peak memory {_size(stage.peak)}{per_process}; {stage.forwards:,} prompt passes, "
            f"{stage.generated:,} generated tokens (at most){time_text}"
        )
        lines += [f"  {name}: {_size(size)}" for name, size in stage.memory.items()]
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
