"""The decoder's linear layers on the CPU: torch's F.linear against oneDNN on a reordered weight.

    python -m benchmarks.cpu_gemm [--hidden 1024 --heads 16 --kv-heads 8 --intermediate 4096] [--rows 1 16 64 512]

For each projection of one decoder layer (wqkv, wo, w1, w2) and each row count (the tokens of a
step), the mean time of both forms and the GFLOP/s it reaches, in float32 and bfloat16, and the
ratio. `FastPath.onednn` (model/onednn_linear.py) is the second form.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.attention_cpu import mean_ms
from benchmarks.engine_bench import MID_SIZE, machine
from monovl.model.onednn_linear import OneDNNLinear, onednn_linear_works


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=MID_SIZE.hidden)
    parser.add_argument("--heads", type=int, default=MID_SIZE.heads)
    parser.add_argument("--kv-heads", type=int, default=MID_SIZE.kv_heads)
    parser.add_argument("--intermediate", type=int, default=MID_SIZE.intermediate)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 512])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    head_dim = args.hidden // args.heads
    shapes = {
        "wqkv": (args.hidden, (args.heads + 2 * args.kv_heads) * head_dim),
        "wo": (args.hidden, args.hidden),
        "w1": (args.hidden, args.intermediate),
        "w2": (args.intermediate, args.hidden),
    }
    print(f"machine: {machine()}")
    print("dtype     layer  rows  F.linear ms (GFLOP/s)  oneDNN ms (GFLOP/s)  F.linear / oneDNN")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            if not onednn_linear_works(torch.device("cpu"), dtype):
                print(f"{dtype}: this torch has no oneDNN linear")
                continue
            for name, (fan_in, fan_out) in shapes.items():
                linear = nn.Linear(fan_in, fan_out, bias=False).to(dtype)
                onednn = OneDNNLinear(linear)
                for rows in args.rows:
                    x = torch.randn(rows, fan_in, generator=generator).to(dtype)
                    plain = mean_ms(lambda: F.linear(x, linear.weight), args.repeats)  # noqa: B023
                    ours = mean_ms(lambda: onednn(x), args.repeats)  # noqa: B023
                    gflop = 2 * rows * fan_in * fan_out / 1e9
                    print(
                        f"{str(dtype).split('.')[-1]:9} {name:5} {rows:5d}  {plain:8.3f} ({gflop / plain * 1e3:6.0f})"
                        f"        {ours:8.3f} ({gflop / ours * 1e3:6.0f})      {plain / ours:5.2f}x"
                    )


if __name__ == "__main__":
    main()
