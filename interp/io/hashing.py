"""Stable hashes of values and files, and the checksums that make a cache folder check itself.

A cache *folder* (``interp.io.atomic.atomic_dir(..., checksums=True)``) holds ``checksums.json`` with the
sha256 of every other file (``write_checksums``); ``entry_damage`` names what no longer matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHECKSUMS = "checksums.json"


def write_checksums(folder: str | Path) -> Path:
    """``checksums.json`` in ``folder``: the sha256 of every other file under it, by relative path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))
    return folder / CHECKSUMS


def entry_damage(folder: str | Path, marker: str) -> str | None:
    """What is wrong with the cache folder ``folder`` (``None`` if nothing): no marker, no or unreadable
    ``checksums.json``, a listed file missing or with other bytes, or a file that is not listed."""
    folder = Path(folder)
    if not (folder / marker).is_file():
        return f"no {marker}"
    if not (folder / CHECKSUMS).is_file():
        return f"no {CHECKSUMS}: written by an older interp, or cut short"
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return f"{CHECKSUMS} is unreadable"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    if files != set(sums):
        return f"files {sorted(set(sums) ^ files)[:3]} missing or not listed"
    for name, digest in sums.items():
        if file_sha256(folder / name) != digest:
            return f"{name} does not match its checksum"
    return None
