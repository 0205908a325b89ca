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
