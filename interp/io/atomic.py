"""Atomic writes: files, folders and the output folder of a command, written whole or not at all.

Saved work is never left half written: files and folders are written under a temporary name, flushed to
disk (``fsync``, the folder too) and renamed into place; they get the permissions the umask gives. When
several processes run one stage (``interp.distributed``), only the main process writes; the others write
into a private folder that is dropped, and every write ends at a barrier, so all processes see the same
files afterwards.

A folder written with ``atomic_dir(..., checksums=True)`` is a self-checking cache entry
(``interp.io.hashing.write_checksums``; read back with ``interp.io.cache.intact_entry``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import OutputExistsError
from .hashing import entry_damage, write_checksums


# ----------------------------------------------------------------------------- files
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder, bottom up."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


def _chmod_by_umask(path: Path, folder: bool) -> None:
    """``mkstemp`` / ``mkdtemp`` make 0600 / 0700; give what a plain ``open`` / ``mkdir`` would. For a
    folder, every file and folder under it too (safetensors writes its files 0600)."""
    mask = _umask()
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)
    if folder:
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffix); on success it is flushed to disk and
    replaces ``path`` in one rename, on error it is removed and ``path`` keeps its old contents."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"refusing to replace {path}: it is a folder, and a file is to be written there")
    if not distributed.is_main():  # one of several processes: only the main one writes (module docstring)
        with _discarded() as folder:
            yield folder / path.name
        return
    try:
        with _atomic_file(path) as tmp:
            yield tmp
    finally:
        distributed.barrier()


@contextmanager
def _discarded() -> Iterator[Path]:
    """A private temporary folder for a process that is not the main one: what it writes is dropped, after
    the main process has written its copy (the barrier)."""
    folder = Path(tempfile.mkdtemp(prefix="interp-discard-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        distributed.barrier()


@contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _chmod_by_umask(tmp, folder=False)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_json_gz(path: str | Path, obj: Any) -> Path:
    """``obj`` as gzip-compressed JSON (``read_json_gz``), written atomically."""
    with atomic_path(path) as tmp:
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as handle:
            json.dump(obj, handle, default=str)
    return Path(path)


def read_json_gz(path: str | Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def check_replaceable(path: str | Path, *markers: str) -> Path:
    """``path`` if a folder of the kind that holds one of ``markers`` may be written there: it does not
    exist, is an empty folder, or holds a marker (a previous output of the same kind); else
    ``OutputExistsError``."""
    path = Path(path)
    if path.is_file() or (
        path.is_dir() and any(path.iterdir()) and not any((path / marker).is_file() for marker in markers)
    ):
        what = "a file" if path.is_file() else f"a folder without {' or '.join(markers)}"
        raise OutputExistsError(f"refusing to replace {path}: it is {what}, not written by interp; choose another path")
    return path


# ----------------------------------------------------------------------------- folders
@contextmanager
def atomic_dir(path: str | Path, marker: str, checksums: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` by renames.

    ``marker`` is a file every folder of this kind holds (``meta.json``, ``adapter_config.json``, ...):
    an existing ``path`` is replaced only if it is empty or holds its marker, so a folder or file the suite
    did not write is never deleted (``OutputExistsError``, before any work). With ``checksums`` the folder
    gets ``checksums.json`` (a cache entry: ``intact_entry``), and an intact entry another process wrote
    while this one was writing is kept rather than replaced, so a reader never sees it vanish. Everything is flushed
    to disk before the rename. On error the temporary folder is removed and ``path`` keeps its old
    contents. Temporary folders that a killed process left beside ``path`` are removed first.
    """
    path = check_replaceable(path, marker)
    if not distributed.is_main():  # one of several processes: only the main one writes (atomic_path)
        with _discarded() as folder:
            yield folder
        return
    try:
        with _atomic_folder(path, marker, checksums) as tmp:
            yield tmp
    finally:
        distributed.barrier()


@contextmanager
def _atomic_folder(path: Path, marker: str, checksums: bool) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    existed = path.exists()  # replacing it is the point; an entry that appears meanwhile is another writer's
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp"))
    try:
        yield tmp
        if checksums:
            write_checksums(tmp)
        _chmod_by_umask(tmp, folder=True)
        _fsync_tree(tmp)
        if checksums and not existed and path.exists() and entry_damage(path, marker) is None:
            shutil.rmtree(tmp)  # another process wrote the same entry first: readers keep seeing it
        else:
            _put_in_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _put_in_place(new: Path, path: Path) -> None:
    """The finished folder ``new`` becomes ``path``: one atomic swap where ``path`` exists (readers see the
    old folder or the new, never none; the old one is then removed), a rename where it does not."""
    if not path.exists():
        os.replace(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        os.replace(path, old)
        try:
            os.replace(new, path)
        except OSError:
            os.replace(old, path)  # the old folder goes back; the caller keeps the new one
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); ``False`` where
    the system cannot (the caller falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _remove_orphans(path: Path) -> None:
    """Remove ``.NAME.*.<pid>.tmp`` / ``.old`` folders beside ``path`` whose process no longer runs."""
    for orphan in path.parent.glob(f".{path.name}.*"):
        parts = orphan.name.rsplit(".", 2)
        if len(parts) != 3 or parts[2] not in ("tmp", "old") or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            shutil.rmtree(orphan, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- command output folders
OUTPUT_MARKER = ".interp-output.json"  # in every folder a command writes: the command, interp's version, an id


def _output_marker(path: Path) -> dict | None:
    """The ``OUTPUT_MARKER`` of ``path`` (command, version, id, the files the run wrote), ``None`` if it
    holds none or one that cannot be read."""
    try:
        marker = json.loads((path / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and isinstance(marker.get("command"), str) and isinstance(marker.get("files"), list)
    return marker if ok else None


def _files_under(folder: Path) -> list[str]:
    """Every file and link under ``folder`` (its marker excepted), by relative path."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.name != OUTPUT_MARKER
    )


def check_output(path: str | Path, command: str) -> Path:
    """Before any work: ``path`` may become the output folder of ``interp command``. It must not be a
    symbolic link (it would be swapped, not followed), a mount point or a file; an existing non-empty folder must hold
    the ``OUTPUT_MARKER`` of an earlier run of the same command and nothing that run did not write (it is
    then replaced whole); the nearest
    existing folder above it must be a writable folder. Else ``OutputExistsError`` naming the problem."""
    path = Path(path)
    if path.is_symlink():
        raise OutputExistsError(f"refusing to write {path}: it is a symbolic link; give the folder it points to")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"refusing to replace {path}: it is a file, not written by interp; choose another path")
    if path.is_dir() and os.path.ismount(path):
        raise OutputExistsError(
            f"refusing to write {path}: it is a mount point, which cannot be swapped; give a folder in it"
        )
    if path.is_dir() and any(path.iterdir()):
        marker = _output_marker(path)
        if marker is None:
            raise OutputExistsError(
                f"refusing to replace {path}: it holds no {OUTPUT_MARKER}, so interp did not write it (or an older "
                "interp did); choose another path"
            )
        if marker["command"] != command:
            raise OutputExistsError(
                f"refusing to replace {path}: it holds the output of `interp {marker['command']}`; give "
                f"`interp {command}` a folder of its own"
            )
        added = sorted(set(_files_under(path)) - set(marker["files"]))
        if added:
            more = f" and {len(added) - 1} more" if len(added) > 1 else ""
            raise OutputExistsError(
                f"refusing to replace {path}: it holds {added[0]!r}{more}, which interp did not write there; move "
                "it, or choose another path"
            )
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputExistsError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputExistsError(f"cannot write {path}: {parent} is not writable")
    return path


def add_to_output(folder: str | Path, command: str, write) -> list[Path]:
    """Add files to the finished output folder of ``interp command`` (or one of ``command``'s ``|``-joined
    names): ``write(folder)`` writes them (atomically, each) and returns their paths, which join the
    folder's ``OUTPUT_MARKER`` list, so a later run of the command may still replace the folder whole.
    ``OutputExistsError`` before anything is written if ``folder`` is not such an output."""
    folder = Path(folder)
    marker = _output_marker(folder)
    if marker is None or marker["command"] not in command.split("|"):
        names = command.replace("|", "` or `interp ")
        raise OutputExistsError(f"{folder} is not the output of `interp {names}` (no matching {OUTPUT_MARKER})")
    paths = write(folder)
    marker["files"] = sorted(set(marker["files"]) | {Path(p).relative_to(folder).as_posix() for p in paths})
    atomic_write_text(folder / OUTPUT_MARKER, json.dumps(marker, indent=1) + "\n")
    return paths


def _launch_pid() -> int:
    """A number every process of this run shares and no other run has: the launcher's pid under
    ``accelerate launch``, else this process's."""
    return os.getppid() if distributed.launched() else os.getpid()


@contextmanager
def output_folder(path: str | Path, command: str) -> Iterator[Path]:
    """The output folder of one run of ``interp command``, written whole or not at all.

    ``check_output`` first (before any work). The run writes into a staging folder beside ``path`` (the
    one yielded; every process gets the same one, only the main process writes). On success the staging
    folder gets the ``OUTPUT_MARKER`` (command, interp version, a random id, the time) and replaces ``path``
    in one swap: whatever an earlier run left and this one did not write is gone with it. On an error or
    Ctrl-C the staging folder is removed and ``path`` keeps what it held; if only the final swap fails,
    the finished output is kept beside ``path`` and the error names where. Staging folders of killed runs
    are removed by the next run beside them."""
    path = check_output(Path(path).absolute(), command)  # absolute: `--out .` has a parent to stage beside
    staging = path.parent / f".{path.name}.staging.{_launch_pid()}.tmp"
    main = distributed.is_main()
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    distributed.barrier()
    try:
        yield staging
        if main:
            check_output(path, command)  # nothing else was put there meanwhile
            marker = {"command": command, "interp": _version(), "id": uuid.uuid4().hex, "written": time.time()}
            marker["files"] = _files_under(staging)
            (staging / OUTPUT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            _chmod_by_umask(staging, folder=True)
            _fsync_tree(staging)
            try:
                _put_in_place(staging, path)
            except OSError as error:  # the work is done: keep it where it is and say where
                placed = staging.with_name(f".{path.name}.finished.{uuid.uuid4().hex[:8]}")
                os.replace(staging, placed)
                raise OutputExistsError(
                    f"could not put the finished output in place of {path} ({error.strerror or error}); it is kept "
                    f"whole at {placed}"
                ) from None
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        distributed.barrier()


def _version() -> str:
    try:
        return version("interp")
    except PackageNotFoundError:
        return "unknown"
