"""Freed heap memory handed back to the system now and then (glibc's `malloc_trim`).

glibc's malloc keeps what was freed (request bodies, decoded images, tiles, their pickled copies
on the engine pipe) in its arenas and returns pages only from the top of a heap, so a process
that has seen many large requests holds more and more. `malloc_trim(0)` returns every free page
of each arena (`benchmarks/heap_trim.py` times it). Where the C library has no such call (musl,
macOS) trimming does nothing.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 5.0


def libc_function(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """`trim_if_due` trims when `interval` seconds have passed since it last did."""

    def __init__(self, interval: float = TRIM_INTERVAL_S) -> None:
        self.interval = interval
        self._trim = libc_function("malloc_trim")
        self._last = time.monotonic()

    def trim_if_due(self) -> None:
        if self._trim is None or time.monotonic() - self._last < self.interval:
            return
        self._trim(0)
        self._last = time.monotonic()
