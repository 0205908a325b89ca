"""Cache location, stable hashing and atomic writes: saved work is never left half written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputExistsError


def cache_root() -> Path:
    """The suite's cache folder: ``$INTERP_CACHE``, or ``~/.cache/interp``."""
    root = Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffix); on success it replaces ``path`` in one
    rename, on error it is removed and ``path`` keeps its old contents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_replaceable(path: str | Path, marker: str) -> Path:
    """``path`` if a folder of the kind that holds ``marker`` may be written there: it does not exist, is
    an empty folder, or holds ``marker`` (a previous output of the same kind); else ``OutputExistsError``."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / marker).is_file()):
        what = "a file" if path.is_file() else f"a folder without {marker}"
        raise OutputExistsError(f"refusing to replace {path}: it is {what}, not written by interp; choose another path")
    return path


@contextmanager
def atomic_dir(path: str | Path, marker: str) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename.

    ``marker`` is a file every folder of this kind holds (``meta.json``, ``adapter_config.json``, ...):
    an existing ``path`` is replaced only if it is empty or holds its marker, so a folder or file the suite
    did not write is never deleted (``OutputExistsError``, before any work). On error the temporary folder
    is removed and ``path`` keeps its old contents.
    """
    path = check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Stopwatch:
    """Seconds per named stage, in the order they ran: ``with watch("capture"): ...``."""

    def __init__(self, log=None) -> None:
        self.seconds: dict[str, float] = {}
        self._log = log

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        if self._log is not None:
            self._log(f"{name}: {self.seconds[name]:.0f}s")
