"""The cache folder and its self-checking entries.

Cache entries check themselves. A cache *file* (``write_cache_json``) stores its value with the sha256
of the value's canonical JSON; a cache *folder* (``interp.io.atomic.atomic_dir(..., checksums=True)``) holds
``checksums.json`` with the sha256 of every other file (``interp.io.hashing``). A reader (``read_cache_json``,
``intact_entry``) that finds an entry truncated, altered, or missing a file reports it in one line on stderr,
removes it and treats it as missing, so the caller computes it again: a damaged cache heals on the next run
and is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .. import distributed
from .atomic import atomic_write_text
from .hashing import entry_damage

# Bumped when the meaning of cache keys changes (2: model fingerprints no longer hash the transformers
# version, the folder or other metadata of a config). Entries made under another scheme are never served
# (their keys differ); the first process that meets such a cache says so once and stamps it.
CACHE_SCHEME = 2
_scheme_checked: set[Path] = set()


def cache_root() -> Path:
    """The suite's cache folder: ``$INTERP_CACHE``, or ``~/.cache/interp`` (``check_cache_scheme`` on
    first use in a process)."""
    root = Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp")).expanduser()
    if root not in _scheme_checked:
        _scheme_checked.add(root)
        check_cache_scheme(root)
    return root


def check_cache_scheme(root: Path) -> None:
    """Create ``root`` stamped with ``CACHE_SCHEME``; if it holds entries from an earlier key scheme, say
    in one line on stderr that they will be rebuilt as they are needed, then stamp it."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / "scheme"
    found = stamp.read_text().strip() if stamp.is_file() else None
    if found == str(CACHE_SCHEME):
        return
    if any(entry.name not in ("downloads", "scheme") and not entry.name.startswith(".") for entry in root.iterdir()):
        print(
            f"interp: the cache {root} holds entries keyed by an earlier scheme ({found or 1}; now "
            f"{CACHE_SCHEME}: model fingerprints no longer hash the transformers version); they are rebuilt as "
            "they are needed",
            file=sys.stderr,
        )
    if distributed.is_main():  # a plain rename: this may run in one process only, so no barrier
        tmp = root / f".scheme.{os.getpid()}"
        tmp.write_text(f"{CACHE_SCHEME}\n")
        os.replace(tmp, stamp)


# ----------------------------------------------------------------------------- self-checking cache entries
def _report_damage(path: Path, why: str) -> None:
    print(f"interp: cache entry {path} is damaged ({why}); removed, computing it again", file=sys.stderr)


def intact_entry(folder: str | Path, marker: str) -> bool:
    """``True`` if the cache folder exists and is intact; a damaged one is reported, removed, ``False``."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return False
    why = "a file, not a folder" if not folder.is_dir() else entry_damage(folder, marker)
    if why is None:
        return True
    _report_damage(folder, why)
    _remove(folder)
    return False


def _json_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def write_cache_json(path: str | Path, value: Any) -> Path:
    """A cache file: ``value`` (made JSON) beside the sha256 of its canonical JSON and the file's own name
    (its key), written atomically."""
    path = Path(path)
    value = json.loads(json.dumps(value, default=str))  # what a reader will get back
    return atomic_write_text(path, json.dumps({"key": path.name, "sha256": _json_digest(value), "value": value}) + "\n")


def read_cache_json(path: str | Path) -> Any | None:
    """The value of a cache file (``write_cache_json``), or ``None`` if there is none; a truncated,
    unreadable or altered file, or one written under another name (another key), is reported, removed
    and read as missing."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_bytes().decode())
        if not isinstance(data, dict) or data.get("sha256") != _json_digest(data.get("value")):
            why = "checksum differs"
        elif data.get("key") != path.name:
            why = f"written as {data.get('key')!r}, another key" if "key" in data else "written by an older interp"
        else:
            return data["value"]
    except (OSError, ValueError, UnicodeDecodeError) as error:
        why = f"unreadable: {type(error).__name__}"
    _report_damage(path, why)
    _remove(path)
    return None


def _remove(path: Path) -> None:
    """Remove a damaged cache entry, whatever it became (file, folder or link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
