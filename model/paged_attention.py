"""Causal grouped-query attention over a paged KV cache, and which attention runs where.

Which attention runs, in the order a step decides it:
- A decode step replayed as a CUDA graph (engine/cuda_graphs.py, on CUDA unless --enforce-eager)
  runs the decode kernel inside the graph.
- Otherwise, one-token rows go to the decode kernel `pick_decode_kernel` chose at start: Triton's
  paged decode (model/triton_decode.py) on CUDA; without it (`--attention-backend torch`, the CPU),
  `padded_decode` when their context lengths are alike (`attend_together`).
- Every other row attends per request over its gathered context (`causal_gqa`): torch's SDPA
  (on CUDA flash or memory-efficient attention, never cuDNN), or on the CPU in bfloat16 GEMMs
  in the reference's eager order (`one_query_gqa`, `blocked_causal_gqa`).

The torch paths run on any device and are the oracle for the kernels. SDPA's softmax is float32
and agrees with the reference's eager matmul-softmax-matmul to float rounding; on the CPU its
bfloat16 runs at float32 speed, hence the GEMMs there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from monovl.model.fast_path import triton_runs_on
from monovl.model.forward_batch import DecodeKernel, ForwardBatch

# Not cuDNN: torch picks its attention first on Hopper, and it builds an execution plan on the CPU
# for every new shape; prefill chunks seldom repeat a shape, so planning would dominate a prefill
# step (docs/performance.md has the measurement). Flash and memory-efficient attention plan nothing.
CUDA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def pick_decode_kernel(backend: str, device: torch.device) -> DecodeKernel | None:
    """`auto`: the Triton paged decode kernel on CUDA when Triton imports, else the torch path."""
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return None
    if not triton_runs_on(device):
        if backend == "triton":
            raise ValueError("attention backend 'triton' needs CUDA and Triton (or TRITON_INTERPRET=1, for tests)")
        return None
    from monovl.model.triton_decode import paged_decode

    return paged_decode


def write_kv(
    key_cache: torch.Tensor, value_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    # caches: [num_blocks, block_size, kv_heads, d]; k, v: [T, kv_heads, d]; slots: [T]
    kv_heads, d = key_cache.shape[-2:]
    key_cache.view(-1, kv_heads, d).index_copy_(0, slots, k.to(key_cache.dtype))
    value_cache.view(-1, kv_heads, d).index_copy_(0, slots, v.to(value_cache.dtype))


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    # cache: [num_blocks, block_size, kv_heads, d] -> [seq_len, kv_heads, d]
    block_size = cache.shape[1]
    blocks = block_table[: (seq_len + block_size - 1) // block_size]
    # index_select copies whole blocks, which the CPU does much faster than cache[blocks] (a generic gather)
    return cache.index_select(0, blocks).flatten(0, 1)[:seq_len]


def one_query_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One decode query in the reference's eager order: scores in q's dtype, softmax in float32,
    probabilities rounded back to q's dtype before they weight V.

    q: [1, heads, d]; k, v: [L, kv_heads, d] -> [1, heads, d].
    """
    kv_heads, d = k.shape[1:]
    grouped = q.reshape(kv_heads, -1, d)  # query head h * group + j reads KV head h
    # K @ q^T, not q @ K^T: the CPU's bfloat16 GEMM is faster with the context as its long side.
    scores = torch.matmul(k.transpose(0, 1), grouped.transpose(1, 2)).transpose(1, 2) / math.sqrt(d)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v.transpose(0, 1)).reshape(1, -1, d)


SCORE_BLOCK_BYTES = 4 << 20  # float32 scores of one block of query rows: about what stays in this CPU's caches


def blocked_causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last n context tokens in the reference's eager order (as
    one_query_gqa), a block of query rows at a time.

    torch's CPU flash attention runs its bfloat16 GEMMs at about the float32 rate; this path keeps
    two bfloat16 GEMMs per block and bounds each block's float32 scores (SCORE_BLOCK_BYTES) so the
    softmax works in cache (`benchmarks/attention_cpu.py` times both; docs/performance.md has the
    figures).
    q: [n, heads, d]; k, v: [L, kv_heads, d] -> [n, heads, d].
    """
    n, heads, d = q.shape
    seq_len, kv_heads = k.shape[:2]
    group = heads // kv_heads
    rows = 32 if heads * seq_len * 4 * 32 <= SCORE_BLOCK_BYTES else 16
    grouped = q.reshape(n, kv_heads, group, d).transpose(0, 1)  # [kv_heads, n, group, d]
    keys = k.permute(1, 2, 0).contiguous()  # [kv_heads, d, L]: one contiguous GEMM operand for all blocks
    values = v.transpose(0, 1).contiguous()  # [kv_heads, L, d]
    out = torch.empty(kv_heads, n, group, d, dtype=q.dtype, device=q.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = grouped[:, start:stop].reshape(kv_heads, (stop - start) * group, d)
        scores = torch.bmm(block, keys).div_(math.sqrt(d))  # [kv_heads, rows x group, L], rows token-major
        # query start + i sees keys up to seq_len - n + start + i: only the last columns hold hidden ones
        first_hidden = seq_len - n + start + 1
        if first_hidden < seq_len:
            tail = scores[:, :, first_hidden:].view(kv_heads, stop - start, group, seq_len - first_hidden)
            row, col = torch.arange(stop - start)[:, None], torch.arange(seq_len - first_hidden)[None, :]
            tail.masked_fill_((col >= row)[None, :, None, :], float("-inf"))
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
        out[:, start:stop] = torch.bmm(probs, values).view(kv_heads, stop - start, group, d)
    return out.transpose(0, 1).reshape(n, heads, d)


def lower_right_causal_mask(n: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """What a chunk of the last n of seq_len tokens sees: query i the keys up to seq_len - n + i.

    On CUDA a CausalBias, which flash attention runs as its own lower-right causal mask (nothing
    materialized); elsewhere the boolean mask that CausalBias would materialize. torch.nn.attention.bias
    imports torch._dynamo, a long import (docs/performance.md, Start-up), so only a CUDA process
    pays for it."""
    if device.type == "cuda":
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(n, seq_len)
    return torch.ones(n, seq_len, dtype=torch.bool, device=device).tril(seq_len - n)


def causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q: [n, heads, d] (the last n of the context); k, v: [L, kv_heads, d] -> [n, heads, d]
    n, seq_len = q.shape[0], k.shape[0]
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        # torch's CPU flash attention in bfloat16 is slower than two GEMMs, for one query and for a
        # prefill chunk after long context (benchmarks/attention_cpu.py); in float32 it is the faster.
        return one_query_gqa(q, k, v) if n == 1 else blocked_causal_gqa(q, k, v)
    mask = lower_right_causal_mask(n, seq_len, q.device) if 1 < n < seq_len else None
    args = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    options = {"attn_mask": mask, "is_causal": n > 1 and mask is None, "enable_gqa": True}
    if q.is_cuda:
        with sdpa_kernel(CUDA_BACKENDS):
            return F.scaled_dot_product_attention(*args, **options)[0].transpose(0, 1)
    return F.scaled_dot_product_attention(*args, **options)[0].transpose(0, 1)


# Decode rows whose padded K and V together stay under this attend in one batched call; the gathered
# tensors then come from the allocator's free memory rather than fresh pages from the kernel.
BATCHED_DECODE_BYTES = 32 << 20
BATCHED_DECODE_PADDING = 1.25  # at most this many padded context tokens per real one


def attend_together(seq_lens: list[int], kv_heads: int, head_dim: int, itemsize: int) -> bool:
    """Whether one-token rows of these context lengths take `padded_decode`: two or more, of similar
    lengths, small enough to gather."""
    if len(seq_lens) < 2:
        return False
    padded = len(seq_lens) * max(seq_lens)
    gathered_bytes = 2 * padded * kv_heads * head_dim * itemsize
    return padded <= BATCHED_DECODE_PADDING * sum(seq_lens) and gathered_bytes <= BATCHED_DECODE_BYTES


def padded_decode(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, tables: torch.Tensor, seq_lens: torch.Tensor
) -> torch.Tensor:
    """A decode kernel in torch: one query per request, every context gathered to the table's width
    and masked past its own length, one attention call for them all instead of one per request.

    q: [D, heads, d]; tables: [D, blocks] (width: the longest context's blocks); seq_lens: [D] -> [D, heads, d].
    """
    rows, heads, d = q.shape
    block_size, kv_heads = key_cache.shape[1:3]
    width = tables.shape[1] * block_size
    index = tables.reshape(-1)  # a shorter table's padding points at block 0: read, then masked
    keys = key_cache.index_select(0, index).view(rows, width, kv_heads, d).to(q.dtype)
    values = value_cache.index_select(0, index).view(rows, width, kv_heads, d).to(q.dtype)
    seen = torch.arange(width, device=q.device)[None, :] < seq_lens[:, None]
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:  # as causal_gqa: two GEMMs in the eager order
        group = heads // kv_heads
        scores = torch.matmul(q.view(rows, kv_heads, group, d), keys.permute(0, 2, 3, 1)).div_(math.sqrt(d))
        scores.masked_fill_(~seen[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, values.transpose(1, 2)).reshape(rows, heads, d)
    # Each KV head's group of query heads as that head's queries: SDPA then runs rows x KV heads
    # programs, not rows x query heads; and an additive mask, which it takes as it is (a boolean
    # one it converts on every call).
    grouped = q.view(rows, kv_heads, heads // kv_heads, d)
    hidden = torch.zeros(rows, 1, 1, width, dtype=q.dtype, device=q.device).masked_fill_(
        ~seen[:, None, None, :], -math.inf
    )
    out = F.scaled_dot_product_attention(grouped, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=hidden)
    return out.reshape(rows, heads, d)


def paged_attention(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, batch: ForwardBatch
) -> torch.Tensor:
    # q: [T, heads, d]; this step's K and V are already in the cache -> [T, heads, d]
    if batch.decodes_whole_batch:
        return batch.decode.kernel(q, key_cache, value_cache, batch.decode.block_tables, batch.decode.seq_lens)
    out = torch.empty_like(q)
    served = set()
    if batch.decode is not None:
        rows = batch.decode.token_rows
        out[rows] = batch.decode.kernel(
            q[rows], key_cache, value_cache, batch.decode.block_tables, batch.decode.seq_lens
        )
        served = set(batch.decode.requests)
    starts = batch.query_start_loc
    for b, seq_len in enumerate(batch.seq_lens):
        if b in served:
            continue
        lo, hi = starts[b], starts[b + 1]
        table = batch.block_tables[b]
        keys = gather_context(key_cache, table, seq_len).to(q.dtype)
        values = gather_context(value_cache, table, seq_len).to(q.dtype)
        out[lo:hi] = causal_gqa(q[lo:hi], keys, values)
    return out
