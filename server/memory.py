"""Keep the heap from holding what requests freed: few malloc arenas, trimmed now and then.

glibc's malloc keeps what a request freed (a large body and its JSON, decoded images, tiles and
their normalized copies) in its arenas, and returns pages only from the top of a heap, above a
threshold that grows with the largest block freed so far. It makes up to eight arenas per CPU,
one for each thread that contends for one (the event loop, the engine, the preprocessing and
resize workers, OpenMP's), each keeping its own peaks: a server that has seen images of many
sizes holds more and more. So the server runs with two arenas, and `malloc_trim(0)` every few
seconds returns every free page of each (`benchmarks/heap_trim.py` times it); the engine
core's process trims its own between steps (engine/heap.py). Where the C library has neither
call (musl, macOS) this does nothing.
"""

from __future__ import annotations

import asyncio
import os

from monovl.engine.heap import TRIM_INTERVAL_S, libc_function

ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter, from glibc's malloc.h


def limit_arenas(arenas: int = ARENAS) -> None:
    """Before the server starts its threads: later threads share these arenas, and the engine
    process, started after, reads the same limit from its environment. MALLOC_ARENA_MAX in the
    environment, the operator's own choice, wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = str(arenas)
    mallopt = libc_function("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, arenas)


async def trim_now_and_then(interval: float = TRIM_INTERVAL_S) -> None:
    trim = libc_function("malloc_trim")
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim(0)
