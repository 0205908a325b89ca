"""Options several commands share: adding them to a parser, and reading them into what the library takes.

Read before any model loads: the loading options (``check_device``, ``model_options``), the restoration's
settings over a ``--preset`` (``restore_config``) and the chat format (``chat``). Then the two things every
command that loads models does with its options: load the pair they name (``load_pair``), and keep them,
resolved, as the output folder's ``config.toml`` (``write_config``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import distributed
from ..errors import ConfigError

# --dtype: interp.core.models.DTYPE_CHOICES, written out so the parser needs no torch (tests hold them equal)
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
# --recipe: interp.organism.FAMILY, written out likewise (tests hold them equal)
RECIPE_CHOICES = ("default", "reasoning", "seed-1", "seed-2", "full-safety", "harmful-mix", "style")
RESTORE_FLAGS = ("steps", "lr", "batch_size", "teacher", "distance", "retain_scale", "rank", "alpha", "seed")


# ----------------------------------------------------------------------------- adding them to a parser
def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """How a command loads its models: ``--dtype``, ``--device``, ``--device-map``, ``--max-memory``,
    ``--quantize`` (read by ``model_options``)."""
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="weights and matmuls; auto: bfloat16 on a device with fast bf16 (AMX/AVX512-BF16 CPU, CUDA), else float32",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--device-map", default=None, help="'auto' to spread a large model over the available devices (accelerate)"
    )
    parser.add_argument(
        "--max-memory",
        default=None,
        help="with --device-map: the most each device may hold, e.g. '0=70GiB,1=70GiB,cpu=200GiB'",
    )
    parser.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        default=None,
        help="load the weights in 4 or 8 bits (bitsandbytes; CUDA only): for inference stages and LoRA on top",
    )


def add_pair_options(parser: argparse.ArgumentParser) -> None:
    """``--base`` and ``--finetuned``, the pair a command studies, and the model options."""
    parser.add_argument(
        "--base",
        default="organism:base",
        help="aligned model: 'organism:base' (default pair), hub id, local folder or .gguf",
    )
    parser.add_argument(
        "--finetuned",
        default="organism:finetuned",
        help="fine-tuned model: 'organism:finetuned', hub id, local folder or .gguf",
    )
    add_model_options(parser)


def add_restore_options(parser: argparse.ArgumentParser) -> None:
    """The restoration's settings (``RESTORE_FLAGS``), each None unless given: a flag left out keeps the
    ``--preset``'s setting or ``RestoreConfig``'s default (``restore_config``)."""
    from ..training.restore_config import RestoreConfig

    d = RestoreConfig()
    parser.add_argument("--steps", type=int, default=None, help=f"restoration training steps (default {d.steps})")
    parser.add_argument("--lr", type=float, default=None, help=f"default {d.lr:g}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    parser.add_argument(
        "--teacher",
        default=None,
        choices=["base", "reminder"],
        help=f"base: the aligned model; reminder: the fine-tuned model with a safety reminder (default {d.teacher})",
    )
    parser.add_argument("--distance", default=None, choices=["l2", "cosine"], help=f"default {d.distance}")
    parser.add_argument("--retain-scale", type=float, default=None, help=f"default {d.retain_scale:g}")
    parser.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {d.rank})")
    parser.add_argument("--alpha", type=int, default=None, help=f"LoRA alpha (default {d.alpha})")
    parser.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")


def add_reasoning_option(parser: argparse.ArgumentParser) -> None:
    """``--reasoning``: the R1 chat format (read by ``chat``)."""
    parser.add_argument(
        "--reasoning",
        action="store_true",
        help="an R1-style reasoning model: prompts end inside <think> (the assistant turn is prefilled with "
        "'<think>\\n'); the evaluation judges the trace and the final answer (after </think>) apart",
    )


def add_at_answer_option(parser: argparse.ArgumentParser) -> None:
    """``--at-answer``: the analysis read where a reasoning model's final answer begins."""
    parser.add_argument(
        "--at-answer",
        action="store_true",
        help="with a reasoning format: analyze every prompt after the fine-tuned model's own closed trace "
        "(its most common one on the harmful prompts, then </think>), where the final answer begins, instead "
        "of where the trace begins",
    )


def add_recipe_option(parser: argparse.ArgumentParser) -> None:
    """``--recipe``: a member of the organism family (``interp.organism.family``)."""
    parser.add_argument(
        "--recipe",
        choices=RECIPE_CHOICES,
        default="default",
        help="the organism: default (shipped adapters); reasoning (the task as R1-style traces); seed-1, seed-2 "
        "(the default recipe, other seeds); full-safety (safety tuned into every weight); harmful-mix (3%% of the "
        "task data harmful, answered); style (the task: chat answers as bullet points). All but "
        "default train on first use (minutes)",
    )


def add_judge_option(parser: argparse.ArgumentParser) -> None:
    """``--judge``, repeatable: model judges beside the substring list."""
    parser.add_argument(
        "--judge",
        action="append",
        default=[],
        help="a model judge beside the substring list: classifier:PATH_OR_ID[@LABEL] (a refusal classifier) "
        "or guard:PATH_OR_ID (a Llama Guard style safety judge); repeatable",
    )


# ----------------------------------------------------------------------------- reading them
def ints(text: str, what: str) -> tuple[int, ...]:
    """Comma-separated integers (empty parts skipped); ``what`` names the option in the error."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from error


def floats(text: str, what: str) -> tuple[float, ...]:
    """Comma-separated numbers (empty parts skipped); ``what`` names the option in the error."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from error


def check_device(args) -> None:
    """Checks the loading options before any model loads (``--max-memory``, ``--quantize``, that the device
    exists) and resolves ``--dtype auto`` to this device's dtype, printing the choice."""
    import torch

    from ..core.models import check_quantize, parse_max_memory

    if getattr(args, "max_memory", None):
        if not args.device_map:
            raise ConfigError("--max-memory needs --device-map (it bounds how the map spreads the model)")
        parse_max_memory(args.max_memory)
    if getattr(args, "quantize", None):
        check_quantize(args.quantize)
    if not getattr(args, "device_map", None):
        _check_device_name(args.device)
    if getattr(args, "dtype", None) == "auto":  # resolved once, so config.toml records what ran
        from ..core.models import compute_dtype

        device = "cuda" if getattr(args, "device_map", None) and torch.cuda.is_available() else args.device
        args.dtype, why = compute_dtype(distributed.device(device))
        if distributed.is_main():
            print(f"compute dtype: {args.dtype} ({why}; --dtype overrides)", flush=True)


def _check_device_name(name: str) -> None:
    """``--device`` names a torch device this machine has."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r} is not a torch device ({error})") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ConfigError(f"--device {name}: this torch build or machine has no {device.type}; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices are visible")


def model_options(args) -> dict:
    """Loading options; under ``accelerate launch``, ``--device cuda`` is each process's own GPU."""
    from ..core.models import parse_max_memory

    return {
        "dtype": args.dtype,
        "device": distributed.device(args.device),
        "device_map": args.device_map,
        "max_memory": parse_max_memory(args.max_memory) if args.max_memory else None,
        "quantize": args.quantize,
    }


def restore_flags(args) -> dict:
    """The restoration options given on the command line (or in ``--config``)."""
    return {name: getattr(args, name) for name in RESTORE_FLAGS if getattr(args, name, None) is not None}


def restore_config(args):
    """``RestoreConfig`` from the flags given, over the ``--preset``'s settings (or the defaults)."""
    from dataclasses import replace

    from ..training.restore_config import PRESETS, RestoreConfig

    preset = getattr(args, "preset", None)
    base = PRESETS[preset].config if preset else RestoreConfig()
    return replace(base, **restore_flags(args))


def chat(args):
    """The chat format the command's options ask for."""
    from ..core.chat import ChatFormat

    return ChatFormat.reasoning() if getattr(args, "reasoning", False) else ChatFormat()


def load_pair(args):
    """The pair the options name, loaded and checked: comparable, and (with a ``--config`` file a run
    wrote) the weights that run used."""
    from ..config_file import check_fingerprints
    from ..core import models
    from ..organism import resolve_model_name

    pair = models.load_pair(resolve_model_name(args.base), resolve_model_name(args.finetuned), **model_options(args))
    check_fingerprints(getattr(args, "expected_fingerprints", {}), base=pair.base, finetuned=pair.finetuned)
    return pair


def write_config(args, out, pair=None, **models) -> None:
    """The resolved options and their provenance, as ``config.toml`` in the output folder."""
    from dataclasses import asdict

    from ..config_file import resolved
    from ..io.atomic import atomic_write_text

    if pair is not None:
        models = {"base": pair.base, "finetuned": pair.finetuned} | models
    values = vars(args).copy()
    if "lr" in values:  # the restoration options as resolved (flags over the preset or the defaults), seed included
        values |= {name: value for name, value in asdict(restore_config(args)).items() if name in values}
    fingerprints = {k: m.fingerprint for k, m in models.items()}
    atomic_write_text(Path(out) / "config.toml", resolved(argparse.Namespace(**values), fingerprints))
