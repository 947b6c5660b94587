"""What one `malloc_trim(0)` costs: with nothing freed since the last, and after a freed heap.

    python -m benchmarks.heap_trim [--mib 256] [--repeats 20]

The engine core and the server call it every few seconds (engine/heap.py, server/memory.py). The
freed heap is `--mib` MiB of buffers of 1 KiB to 1 MiB, every other one freed, so free pages lie
between live ones, as after requests of many sizes. Prints the median of `--repeats` calls each.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from statistics import median

from benchmarks.engine_bench import machine
from monovl.engine.heap import libc_function


def timed_ms(call: Callable[[int], int]) -> float:
    started = time.perf_counter()
    call(0)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    trim = libc_function("malloc_trim")
    if trim is None:
        raise SystemExit("this C library has no malloc_trim")
    rng = random.Random(0)
    trim(0)
    idle = median(timed_ms(trim) for _ in range(args.repeats))
    freed = []
    for _ in range(args.repeats):
        buffers, total = [], 0
        while total < args.mib * 2**20:
            size = rng.randrange(2**10, 2**20)
            buffers.append(bytearray(size))  # written: its pages are resident
            total += size
        del buffers[::2]
        freed.append(timed_ms(trim))
        del buffers
        trim(0)
    print(f"{machine()}: malloc_trim(0) with nothing freed {idle:.3f} ms; after freeing half of {args.mib} MiB")
    print(f"in 1 KiB-1 MiB buffers {median(freed):.2f} ms (medians of {args.repeats} calls)")


if __name__ == "__main__":
    main()
