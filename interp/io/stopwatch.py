"""A stopwatch for the time each stage of a run takes."""

from __future__ import annotations

import ctypes
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager


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


class PeakMemory:
    """The peak resident memory the work inside adds to the process, in MiB: ``with PeakMemory() as
    peak: ...; peak.mib``.

    Read from the kernel's high-water mark: on entry, heap memory the process freed earlier is handed back
    to the system (``malloc_trim``) so the work cannot reuse it unseen, and the mark is reset to the current
    resident size (``/proc/self/clear_refs``); on exit the peak is the mark minus that size. Tensors the
    process still holds are not counted, so on a process holding only the work's inputs it is what the work
    needs. Where the mark cannot be reset (not Linux), resident memory is sampled every ``interval`` seconds
    in a thread instead, a lower bound. Not reentrant: an inner measure would reset the outer one's mark."""

    _active = False

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.mib = 0.0
        self.method = ""  # "kernel high-water mark" or "sampled"

    def __enter__(self) -> PeakMemory:
        if PeakMemory._active:
            raise RuntimeError("PeakMemory is not reentrant: measure one piece of work at a time")
        PeakMemory._active = True
        gc.collect()
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # reset VmHWM to VmRSS
            self._start = _status_kib("VmRSS") * 1024
            self.method = "kernel high-water mark"
            return self
        except OSError:
            pass
        import threading

        import psutil

        process = psutil.Process()
        self._start = process.memory_info().rss
        self._peak = self._start
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, process.memory_info().rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        self.method = "sampled"
        return self

    def __exit__(self, *exc) -> None:
        PeakMemory._active = False
        if self.method == "sampled":
            self._stop.set()
            self._thread.join()
            peak = self._peak
        else:
            peak = _status_kib("VmHWM") * 1024
        self.mib = max(peak - self._start, 0) / 2**20


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status``."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``; nothing elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
