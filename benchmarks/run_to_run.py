"""Whether `monovl generate` gives the same logprobs in process after process.

    python -m benchmarks.run_to_run [--runs 16] [--fast-path auto] [--perturb 77] [--no-aslr]

Runs a greedy image chat as tests/test_generate_cli.py does (the test suite's tiny checkpoint, a
900x400 picture of noise) `--runs` times, each in a new process, with glibc's `MALLOC_PERTURB_` set (heap
contents then differ from run to run) and, with `--no-aslr`, address randomization off
(`setarch -R`); prints each distinct first-token logprob with how many runs gave it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.engine_bench import machine
from monovl.preprocessing.tiny_checkpoint import make_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--fast-path", default="auto")
    parser.add_argument("--perturb", default="77", help="MALLOC_PERTURB_ for each run")
    parser.add_argument("--no-aslr", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    checkpoint = make_tiny_checkpoint(work / "tiny")
    image = work / "wide.png"
    pixels = np.random.default_rng(5).integers(0, 256, (400, 900, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    command = [sys.executable, "-m", "monovl.server.cli", "generate", "--model", str(checkpoint), "--json"]
    command += ["--max-tokens", "12", "--image", str(image), "--prompt", "Describe the image."]
    command += ["--fast-path", args.fast_path]
    if args.no_aslr:
        command = ["setarch", "-R", *command]
    seen: Counter[tuple[float, tuple[int, ...]]] = Counter()
    for _ in range(args.runs):
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, "MALLOC_PERTURB_": args.perturb})  # fmt: skip
        record = json.loads(done.stdout)
        seen[(record["logprobs"][0]["logprob"], tuple(record["token_ids"]))] += 1
    print(f"machine: {machine()}; --fast-path {args.fast_path}, MALLOC_PERTURB_={args.perturb}, "
          f"address randomization {'off' if args.no_aslr else 'on'}")  # fmt: skip
    tokens = {ids for _, ids in seen}
    for (logprob, _), count in seen.most_common():
        print(f"first-token logprob {logprob!r}: {count} of {args.runs} runs")
    print("the same tokens in every run" if len(tokens) == 1 else f"{len(tokens)} different token sequences")


if __name__ == "__main__":
    main()
