"""Compare `monovl generate` with the authors' reference on reference-written checkpoints.

A developer tool, not a test: it needs the parity harness in ../shared/reference and its venv
(see that README), which CI does not have.

    python scripts/parity_check.py CKPT --ref-python /tmp/ref-venv/bin/python \
        [--image IMG]... [--question Q] [--history-json F] [--system S] [--max-tokens 32] [--fast-path none]

Prints one line per case: prompt ids equal, generated ids equal, max |logprob difference|.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ref_generate.py"


def run_reference(args: argparse.Namespace) -> dict:
    cmd = [args.ref_python, str(HARNESS), args.checkpoint, "--question", args.question, "--stop", "template"]
    cmd += ["--max-new-tokens", str(args.max_tokens), "--image-join", "newline"]
    for image in args.image:
        cmd += ["--image", image]
    if args.system is not None:
        cmd += ["--system", args.system]
    if args.history_json:
        cmd += ["--history-json", args.history_json]
    if args.max_num_tiles:
        cmd += ["--max-num", str(args.max_num_tiles)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def run_ours(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "monovl.server.cli", "generate", "--model", args.checkpoint, "--json"]
    cmd += ["--max-tokens", str(args.max_tokens), "--dtype", "float32"]
    for image in args.image:
        cmd += ["--image", image]
    if args.system is not None:
        cmd += ["--system", args.system]
    if args.history_json:
        cmd += ["--history-json", args.history_json]
    if args.max_num_tiles:
        cmd += ["--max-num-tiles", str(args.max_num_tiles)]
    cmd += ["--fast-path", args.fast_path, "--prompt", args.question]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--ref-python", default="/tmp/ref-venv/bin/python")
    parser.add_argument("--question", default="Describe the image.")
    parser.add_argument("--image", action="append", default=[])
    parser.add_argument("--system")
    parser.add_argument("--history-json")
    parser.add_argument("--max-num-tiles", type=int)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--fast-path", default="auto", help="ours: the optional kernels (none: the plain torch path)")
    args = parser.parse_args()
    ref, ours = run_reference(args), run_ours(args)
    same_prompt = ref["prompt_token_ids"] == ours["prompt_token_ids"]
    same_ids = ref["generated_token_ids"] == ours["token_ids"]
    diffs = [abs(s["logprob"] - o["logprob"]) for s, o in zip(ref["steps"], ours["logprobs"], strict=False)]
    top_diffs = [
        abs(a[1] - b[1])
        for s, o in zip(ref["steps"], ours["logprobs"], strict=False)
        for a, b in zip(s["top5"], o["top_logprobs"], strict=False)
        if a[0] == b[0]
    ]
    ok = same_prompt and same_ids and max(diffs + top_diffs, default=0) < 1e-4
    print(
        f"{'OK  ' if ok else 'FAIL'} prompt_ids={same_prompt} ids={same_ids} "
        f"n={len(ours['token_ids'])}/{len(ref['generated_token_ids'])} "
        f"max_dlogprob={max(diffs, default=0):.2e} max_dtop5={max(top_diffs, default=0):.2e} "
        f"tiles={[im['num_tiles'] for im in ref['images']]}"
    )
    if not same_prompt:
        print("  ref :", ref["prompt_token_ids"][:60], file=sys.stderr)
        print("  ours:", ours["prompt_token_ids"][:60], file=sys.stderr)
    if not same_ids:
        print("  ref :", ref["generated_token_ids"], file=sys.stderr)
        print("  ours:", ours["token_ids"], file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
