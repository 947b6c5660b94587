"""Hand freed heap memory back to the operating system now and then.

glibc's malloc keeps what a request freed (a large body and its JSON, decoded images, tiles and
their normalized copies) in its arenas, one for each thread that allocated it, and returns pages
only from the top of a heap, above a threshold that grows with the largest block freed so far. A
server that has seen bodies and images of many sizes so holds more and more of its peaks.
`malloc_trim(0)` returns every free page of every arena; it takes microseconds when there is
little to return. Where the C library has no malloc_trim (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

TRIM_INTERVAL_S = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


async def trim_now_and_then(interval: float = TRIM_INTERVAL_S) -> None:
    trim = _malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim(0)
