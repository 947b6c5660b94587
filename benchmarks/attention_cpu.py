"""Attention on the CPU: torch's fused SDPA against plain GEMMs, per dtype, for decode and prefill.

    python -m benchmarks.attention_cpu [--contexts 512 1426 3400] [--requests 32] [--chunk 512]

Each case gathers a request's K and V from a paged cache (blocks of 16, 8 KV heads, 16 query heads,
head dim 64: the mid-size benchmark checkpoint) and attends one query to them, for `--requests`
requests whose blocks lie apart (so each reads cold memory, as a decode step over many chats does).
It prints the time per request and layer for `F.scaled_dot_product_attention` and for
`model.paged_attention.one_query_gqa`, and the largest difference of each from float64. Then a
prefill chunk of `--chunk` queries at the end of each context (the whole context when it is no
longer): SDPA with its lower-right causal mask against `blocked_causal_gqa`. This is how
`causal_gqa` chooses its paths per dtype.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from benchmarks.engine_bench import machine
from monovl.model.paged_attention import blocked_causal_gqa, gather_context, lower_right_causal_mask, one_query_gqa

BLOCK, KV_HEADS, HEADS, HEAD_DIM = 16, 8, 16, 64


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n, seq_len = q.shape[0], k.shape[0]
    mask = lower_right_causal_mask(n, seq_len, q.device) if 1 < n < seq_len else None
    args = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    options = {"attn_mask": mask, "is_causal": n > 1 and mask is None, "enable_gqa": True}
    return F.scaled_dot_product_attention(*args, **options)[0].transpose(0, 1)


def mean_ms(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def chunk_case(dtype: torch.dtype, chunk: int, context: int, repeats: int) -> str:
    generator = torch.Generator().manual_seed(context)
    n = min(chunk, context)
    q = torch.randn(n, HEADS, HEAD_DIM, generator=generator).to(dtype)
    k, v = (torch.randn(context, KV_HEADS, HEAD_DIM, generator=generator).to(dtype) for _ in range(2))
    exact = sdpa(q.double(), k.double(), v.double())
    errors = [(kernel(q, k, v).double() - exact).abs().max().item() for kernel in (sdpa, blocked_causal_gqa)]
    fused, blocked = mean_ms(lambda: sdpa(q, k, v), repeats), mean_ms(lambda: blocked_causal_gqa(q, k, v), repeats)
    name = str(dtype).removeprefix("torch.")
    return (
        f"{name:9} {n:5} {context:7}  {fused:7.1f}  {blocked:10.1f}  {fused / blocked:7.2f}x"
        f"  {errors[0]:.1e} / {errors[1]:.1e}"
    )


def case(dtype: torch.dtype, context: int, requests: int, repeats: int) -> str:
    blocks_each = -(-context // BLOCK)
    generator = torch.Generator().manual_seed(context)
    shape = (requests * blocks_each * 2, BLOCK, KV_HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, generator=generator).to(dtype)
    value_cache = torch.randn(shape, generator=generator).to(dtype)
    q = torch.randn(1, HEADS, HEAD_DIM, generator=generator).to(dtype)
    # every other run of blocks, so no request's context sits in cache after the one before
    tables = [torch.arange(2 * r * blocks_each, (2 * r + 1) * blocks_each) for r in range(requests)]

    def attend(kernel, table: torch.Tensor) -> torch.Tensor:
        k, v = gather_context(key_cache, table, context), gather_context(value_cache, table, context)
        return kernel(q, k, v)

    def per_request_us(kernel) -> float:
        for table in tables:
            attend(kernel, table)
        start = time.perf_counter()
        for _ in range(repeats):
            for table in tables:
                attend(kernel, table)
        return (time.perf_counter() - start) / (repeats * len(tables)) * 1e6

    k, v = gather_context(key_cache, tables[0], context), gather_context(value_cache, tables[0], context)
    exact = sdpa(q.double(), k.double(), v.double())
    errors = [(attend(kernel, tables[0]).double() - exact).abs().max().item() for kernel in (sdpa, one_query_gqa)]
    fused, gemms = per_request_us(sdpa), per_request_us(one_query_gqa)
    name = str(dtype).removeprefix("torch.")
    return (
        f"{name:9} {context:7}  {fused:7.0f}  {gemms:12.0f}  {fused / gemms:7.2f}x  {errors[0]:.1e} / {errors[1]:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1426, 3400])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=512, help="queries of a prefill chunk")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("one decode query, per request and layer")
    print("dtype     context  SDPA us  two GEMMs us  speed-up  max |diff| SDPA / GEMMs (vs float64)")
    for dtype in (torch.float32, torch.bfloat16):
        for context in args.contexts:
            print(case(dtype, context, args.requests, args.repeats))
    print("a prefill chunk, per layer")
    print("dtype     chunk context  SDPA ms  blocked ms  speed-up  max |diff| SDPA / blocked (vs float64)")
    for dtype in (torch.float32, torch.bfloat16):
        for context in args.contexts:
            print(chunk_case(dtype, args.chunk, context, max(1, args.repeats // 2)))


if __name__ == "__main__":
    main()
