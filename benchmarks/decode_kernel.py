"""The Triton paged decode kernel alone: read bandwidth by batch, context and partition size.

    python -m benchmarks.decode_kernel [--partitions 64 128 256] [--batches 1 8 64] [--contexts 512 1600 8192]

Each case times `paged_decode` on random K/V in the real 2B layout (8 KV heads, 16 query heads,
head dim 128, blocks of 16, bfloat16), from a block table of shuffled blocks, and prints the
K/V bytes it must read over the time, against the device's streaming read bandwidth, for each
partition size and for the size `partition_size` picks (marked *): the sweep that checks its
rule. CUDA only: on the CPU the
kernel runs in Triton's interpreter, which times nothing useful.
"""

from __future__ import annotations

import argparse

import torch

import monovl.model.triton_decode as triton_decode
from benchmarks.engine_bench import machine
from benchmarks.roofline import read_bandwidth


def time_ms(fn, *args, repeats: int = 50) -> float:
    for _ in range(5):
        fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, nargs="+", default=sorted(triton_decode.PARTITIONS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1600, 8192])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    device = torch.device("cuda")
    kv_heads, heads, head_dim, block_size = 8, 16, 128, 16
    bandwidth = read_bandwidth(device)
    print(f"machine: {machine()}; read bandwidth {bandwidth / 2**30:.0f} GiB/s")
    print(f"{'batch':>5} {'context':>7} {'partition':>9} {'us':>8} {'GiB/s':>7} {'of bw':>6}")
    for batch in args.batches:
        for context in args.contexts:
            blocks_per_seq = -(-context // block_size)
            num_blocks = batch * blocks_per_seq
            shape = (num_blocks, block_size, kv_heads, head_dim)
            key_cache = torch.randn(shape, device=device, dtype=torch.bfloat16)
            value_cache = torch.randn(shape, device=device, dtype=torch.bfloat16)
            tables = torch.randperm(num_blocks, device=device).view(batch, blocks_per_seq)
            seq_lens = torch.full((batch,), context, device=device, dtype=torch.int32)
            q = torch.randn(batch, heads, head_dim, device=device, dtype=torch.bfloat16)
            needed = 2 * batch * context * kv_heads * head_dim * 2
            chosen = triton_decode.partition_size(batch, kv_heads, blocks_per_seq * block_size, device)
            for partition in args.partitions:
                ms = time_ms(triton_decode.paged_decode, q, key_cache, value_cache, tables, seq_lens, partition)
                rate = needed / (ms / 1000)
                figures = f"{ms * 1000:8.1f} {rate / 2**30:7.0f} {rate / bandwidth:6.0%}"
                mark = "*" if partition == chosen else " "
                print(f"{batch:>5} {context:>7} {partition:>8}{mark} {figures}")


if __name__ == "__main__":
    main()
