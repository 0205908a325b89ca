"""Self-distillation: the output-space peer of restoration. Where restoration pulls the fine-tuned model's
hidden states on harmful prompts toward a safe teacher's, this trains the same LoRA places on what the
teacher *says*, so the two differ only in what is matched.

Data, from the restoration's own prompts:

* safety: for every harmful prompt ``x``, the teacher's greedy answer ``y_T(x)`` (the aligned base), up to
  ``answer_tokens`` tokens;
* retain: the fine-tuned model's own greedy answer ``y_F(x)`` to as many retain prompts (harmless and task;
  drawn without replacement with the seed, cycling through them if there are fewer), so that the student
  keeps saying what it said: the output-space analogue of the retain loss.

Loss (``interp.training.sft``): next-token cross-entropy on the answer tokens only,

    L = - (1 / |A|) sum_{(x, y) in batch} sum_t log p_theta(y_t | x, y_<t),

with LoRA of the restoration's rank and alpha on every target module of ``layers`` (whole blocks), the
restoration's number of steps, and batches of ``2 x`` its batch size drawn from the pooled examples (its
harmful and retain halves, on average). Unlike restoration there is no linear schedule between the two parts.

Trained adapters are cached (keyed by both models' weights, the layers, the settings and the prompts).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass

from safetensors.torch import load_file, save_file

from ..core.chat import ChatFormat
from ..core.generate import generate
from ..core.models import LoadedModel, ModelPair
from ..core.prompts import PromptSet
from ..errors import ConfigError
from ..io.atomic import atomic_dir, atomic_write_json
from ..io.cache import cache_root, intact_entry
from ..io.hashing import stable_hash
from ..io.stopwatch import PeakMemory
from .lora import merge_adapter_state
from .restore_config import RestoreConfig
from .sft import Example, SFTConfig, sft_lora

CACHE_VERSION = 1


@dataclass(frozen=True)
class Distilled:
    """One self-distilled model: its weights (adapter merged), and what making it cost."""

    model: LoadedModel
    seconds: float  # to make it: the teacher's and its own answers, then training (when it was made)
    trainable_params: int
    examples: int
    peak_mib: float  # the peak memory making it added (``interp.io.stopwatch.PeakMemory``)
    cached: bool  # read from the cache this time


def distillation_examples(
    pair: ModelPair, harmful: PromptSet, retain: PromptSet, *, answer_tokens: int = 48, seed: int = 0,
    chat: ChatFormat = ChatFormat(), progress: bool = False,
) -> list[Example]:  # fmt: skip
    """The teacher's answers to ``harmful`` and the fine-tuned model's own to as many ``retain`` prompts
    (module docstring), harmful first."""
    harmful.require_nonempty()
    retain.require_nonempty()
    order = list(range(len(retain)))
    random.Random(seed).shuffle(order)
    picked = [order[i % len(order)] for i in range(len(harmful))]
    kept = [retain.instructions[i] for i in picked]
    options = {"chat": chat, "max_new_tokens": answer_tokens, "progress": progress}
    taught = generate(pair.base, harmful, **options)
    own = generate(pair.finetuned, kept, **options)
    return [Example(q, a) for q, a in zip(harmful.instructions, taught)] + [Example(q, a) for q, a in zip(kept, own)]


def self_distill(
    pair: ModelPair, harmful: PromptSet, retain: PromptSet, layers: list[int], restore: RestoreConfig, *,
    lr: float | None = None, answer_tokens: int = 48, chat: ChatFormat = ChatFormat(), cache: bool = True,
    progress: bool = False,
) -> Distilled:  # fmt: skip
    """The fine-tuned model self-distilled at ``layers`` with ``restore``'s rank, alpha, steps, seed and
    batch size, at ``lr`` (default: ``restore.lr``); module docstring. ``pair.finetuned`` stays unchanged."""
    if not layers or min(layers) < 0 or max(layers) >= pair.n_layers:
        raise ConfigError(f"self_distill: layers must be blocks in [0, {pair.n_layers}), got {layers}")
    config = SFTConfig(
        steps=restore.steps, lr=lr or restore.lr, batch_size=2 * restore.batch_size, rank=restore.rank,
        alpha=restore.alpha, max_answer_tokens=answer_tokens, seed=restore.seed, compute_dtype="bfloat16",
    )  # fmt: skip
    key = stable_hash([pair.base.fingerprint, pair.finetuned.fingerprint, sorted(layers), config.to_dict(),
                       harmful.hash, retain.hash, chat.to_dict(), CACHE_VERSION])  # fmt: skip
    folder = cache_root() / "distillations" / key
    lora = config.lora_config(layers)
    name = f"self-distilled {sorted(layers)}"
    if cache and intact_entry(folder, "stats.json"):
        stats = json.loads((folder / "stats.json").read_text())
        student = pair.finetuned.with_hf(copy.deepcopy(pair.finetuned.hf), name=name)
        model = merge_adapter_state(student, load_file(folder / "adapter.safetensors"), lora, name=name)
        return Distilled(model, stats["seconds_with_answers"], stats["trainable_params"], stats["examples"],
                         stats["peak_mib"], cached=True)  # fmt: skip
    start = time.perf_counter()
    with PeakMemory() as peak:  # the student's copy, the answers and training
        student = pair.finetuned.with_hf(copy.deepcopy(pair.finetuned.hf), name=name)
        examples = distillation_examples(pair, harmful, retain, answer_tokens=answer_tokens, seed=restore.seed,
                                         chat=chat, progress=progress)  # fmt: skip
        result = sft_lora(student, examples, config, chat=chat, progress=progress, desc="self-distill", layers=layers)
    seconds = time.perf_counter() - start
    stats = {**result.stats, "examples": len(examples), "seconds_with_answers": round(seconds, 1),
             "peak_mib": round(peak.mib, 1)}  # fmt: skip
    if cache:
        with atomic_dir(folder, marker="stats.json", checksums=True) as tmp:
            save_file(result.adapter, tmp / "adapter.safetensors")
            atomic_write_json(tmp / "stats.json", stats)
    model = result.model.with_hf(result.model.hf, name=name)
    return Distilled(model, seconds, result.stats["trainable_params"], len(examples), peak.mib, cached=False)
