"""Causal grouped-query attention over a paged KV cache: the plain torch path.

It runs on any device and is the oracle for faster kernels. Its arithmetic follows the reference
eager attention: scores = (q @ k^T) / sqrt(d) in the activations' dtype, softmax in float32, cast
back, then @ v.
"""

from __future__ import annotations

import math

import torch

from model.forward_batch import ForwardBatch


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
    return cache[blocks].flatten(0, 1)[:seq_len]


def causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q: [n, heads, d] (the last n of the context); k, v: [L, kv_heads, d] -> [n, heads, d]
    n, heads, d = q.shape
    seq_len, kv_heads, _ = k.shape
    group = heads // kv_heads
    qg = q.view(n, kv_heads, group, d).permute(1, 2, 0, 3)  # [kv_heads, group, n, d]
    kt = k.permute(1, 2, 0)[:, None]  # [kv_heads, 1, d, L]
    scores = torch.matmul(qg, kt) / math.sqrt(d)  # [kv_heads, group, n, L]
    if n > 1:
        query_pos = torch.arange(seq_len - n, seq_len, device=q.device)[:, None]
        future = torch.arange(seq_len, device=q.device)[None, :] > query_pos
        scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, v.permute(1, 0, 2)[:, None])  # [kv_heads, group, n, d]
    return out.permute(2, 0, 1, 3).reshape(n, heads, d)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: ForwardBatch,
) -> torch.Tensor:
    # q: [T, heads, d]; k, v: [T, kv_heads, d] for this step's tokens -> [T, heads, d]
    write_kv(key_cache, value_cache, k, v, batch.slot_mapping)
    out = torch.empty_like(q)
    starts = batch.query_start_loc
    for b, seq_len in enumerate(batch.seq_lens):
        lo, hi = starts[b], starts[b + 1]
        table = batch.block_tables[b]
        keys = gather_context(key_cache, table, seq_len).to(q.dtype)
        values = gather_context(value_cache, table, seq_len).to(q.dtype)
        out[lo:hi] = causal_gqa(q[lo:hi], keys, values)
    return out
