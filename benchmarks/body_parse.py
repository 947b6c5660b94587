"""Event-loop time to parse and validate a request body of many small values, without the
server's value limit (`--max-body-values`) and just under it.

    python -m benchmarks.body_parse [--megabytes 60]

Bodies of token ids (`/v1/completions`) and of one-word chat messages, `--megabytes` each, then
each just under the default limit's number of values: seconds for `parse_json_object` and the
request model's validation, the work the server does on its event loop before anything else.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.engine_bench import machine
from monovl.server.completions import CompletionRequest
from monovl.server.protocol import ChatCompletionRequest
from monovl.server.request_body import DEFAULT_MAX_VALUES, parse_json_object

_MESSAGE = b'{"role": "user", "content": "a"}'


def bodies(ids: int, messages: int) -> dict[str, tuple[bytes, type]]:
    return {
        f"{ids:,} token ids": (b'{"prompt": [' + b",".join([b"1"] * ids) + b"]}", CompletionRequest),
        f"{messages:,} messages": (b'{"messages": [' + b",".join([_MESSAGE] * messages) + b"]}", ChatCompletionRequest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=60)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    size = args.megabytes * 2**20
    # A message holds one comma and is followed by another: half the limit's messages reach it.
    for ids, messages in (
        (int(size / 2), int(size / (len(_MESSAGE) + 1))),
        (DEFAULT_MAX_VALUES - 1, DEFAULT_MAX_VALUES // 2 - 1),
    ):
        for name, (raw, model) in bodies(ids, messages).items():
            started = time.perf_counter()
            data = parse_json_object(raw, max_values=raw.count(b",") + 1)
            parsed = time.perf_counter()
            model.model_validate(data)
            done = time.perf_counter()
            print(f"{len(raw) / 2**20:.1f} MB, {name}: parse {parsed - started:.2f} s, validate {done - parsed:.2f} s")


if __name__ == "__main__":
    main()
