"""What a compiled grammar holds in memory against what xgrammar counts (`memory_size_bytes`), and
how long large ones take to compile.

    python -m benchmarks.grammar_memory [--count 30] [--large]

Compiles `--count` unique grammars of each shape on the demo checkpoint's vocabulary, all kept,
and prints the process's resident growth (after `malloc_trim`) over the sum of their
`memory_size_bytes`: the factor the grammar cache counts them by
(`engine.structured_output.RESIDENT_PER_COUNTED_BYTE`). With `--large`, then compiles one each of
the slow specs the server's compile limit is for and prints its seconds and size (minutes in all).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from benchmarks.engine_bench import machine
from monovl.engine.heap import libc_function
from monovl.engine.structured_output import RESIDENT_PER_COUNTED_BYTE, Grammars, StructuredOutput, Vocabulary
from monovl.preprocessing.tiny_checkpoint import ensure_demo_checkpoint
from monovl.preprocessing.tokenizer import Tokenizer


def _object(k: int, count: int, kind: str, required: bool) -> StructuredOutput:
    properties = {f"p{k}_{i}": {"type": kind} for i in range(count)}
    return StructuredOutput.json_schema(
        {"type": "object", "properties": properties, **({"required": list(properties)} if required else {})}
    )


SHAPES: dict[str, Callable[[int], StructuredOutput]] = {
    "300 required integers": lambda k: _object(k, 300, "integer", True),
    "150 optional strings": lambda k: _object(k, 150, "string", False),
    "2,000-item enum": lambda k: StructuredOutput.json_schema({"enum": [f"e{k}_{i}" for i in range(2000)]}),
    "300-way regex": lambda k: StructuredOutput(
        "regex", "(" + "|".join(f"w{k}x{i}[a-z]{{2,5}}" for i in range(300)) + ")"
    ),
    "two properties": lambda k: _object(k, 2, "string", True),
}


LARGE: dict[str, Callable[[], StructuredOutput]] = {
    "2,000 optional integers": lambda: _object(-1, 2000, "integer", False),
    "4,000 optional integers": lambda: _object(-2, 4000, "integer", False),
    "100,000-item enum": lambda: StructuredOutput.json_schema({"enum": [f"v{i}" for i in range(100_000)]}),
}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--large", action="store_true", help="also time the slow specs, one each")
    args = parser.parse_args()
    checkpoint, _ = ensure_demo_checkpoint()
    grammars = Grammars(Vocabulary(Tokenizer(checkpoint).text_pieces(), (2,)), cache_bytes=2**40)
    for json_vocabulary in (True, False):
        grammars.compiler(json=json_vocabulary)
    grammars.compile(StructuredOutput.json_schema({"type": "object"}))
    trim = libc_function("malloc_trim")
    print(f"machine: {machine()}; the cache counts {RESIDENT_PER_COUNTED_BYTE} resident bytes per counted byte")
    for name, shape in SHAPES.items():
        trim(0)
        before, counted = resident_bytes(), 0
        for k in range(args.count):
            counted += grammars.compile(shape(k)).memory_size_bytes
        trim(0)
        grew = resident_bytes() - before
        print(
            f"{name}: {args.count} grammars, counted {counted / 2**20:.1f} MiB, resident +{grew / 2**20:.1f} MiB, "
            f"{grew / counted:.2f} resident per counted byte"
        )

    for name, shape in LARGE.items() if args.large else ():
        started = time.perf_counter()
        compiled = grammars.compile(shape())
        seconds, mib = time.perf_counter() - started, compiled.memory_size_bytes / 2**20
        print(f"{name}: compiled in {seconds:.1f} s, {mib:.1f} MiB counted")


if __name__ == "__main__":
    main()
