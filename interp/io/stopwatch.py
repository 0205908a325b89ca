"""A stopwatch for the time each stage of a run takes."""

from __future__ import annotations

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
    """The process's peak resident memory above its level at the start, sampled every ``interval`` seconds
    in a thread: ``with PeakMemory() as peak: ...; peak.mib``. Memory the allocator reuses from earlier
    work is not counted, so this is a lower bound on what the work needs on a fresh process."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.mib = 0.0

    def __enter__(self) -> PeakMemory:
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
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = (self._peak - self._start) / 2**20
