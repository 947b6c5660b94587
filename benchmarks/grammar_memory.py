"""What a compiled grammar holds in memory against what xgrammar counts (`memory_size_bytes`).

    python -m benchmarks.grammar_memory [--count 30]

Compiles `--count` unique grammars of each shape on the demo checkpoint's vocabulary, all kept,
and prints the process's resident growth (after `malloc_trim`) over the sum of their
`memory_size_bytes`: the factor the grammar cache counts them by
(`engine.structured_output.RESIDENT_PER_COUNTED_BYTE`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from benchmarks.engine_bench import machine
from engine.heap import libc_function
from engine.structured_output import RESIDENT_PER_COUNTED_BYTE, Grammars, StructuredOutput, Vocabulary
from preprocessing.tiny_checkpoint import ensure_demo_checkpoint
from preprocessing.tokenizer import Tokenizer


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


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=30)
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


if __name__ == "__main__":
    main()
