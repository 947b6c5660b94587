"""Paged-attention decode kernel in Triton: one query token per request, K/V read in place.

The torch path gathers each request's context into a new tensor before attending; this kernel
walks the block table instead and keeps a running (online) softmax, so decode reads every cached
byte once. One program per (request, KV head) handles the whole group of query heads that share
that KV head. It runs on CUDA, and on the CPU under TRITON_INTERPRET=1 for tests.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, out_ptr,
    scale,
    stride_q_token, stride_q_head,
    stride_kc_block, stride_kc_slot, stride_kc_head,
    stride_bt_row,
    stride_o_token, stride_o_head,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):  # fmt: skip
    request = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + request)
    heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
    head_ok = tl.arange(0, GROUP_PAD) < GROUP
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + request * stride_q_token + heads[:, None] * stride_q_head + dims[None, :],
        mask=head_ok[:, None] & dim_ok[None, :], other=0.0,
    ).to(tl.float32)  # fmt: skip
    best = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    slots = tl.arange(0, BLOCK_SIZE)
    for start in range(0, seq_len, BLOCK_SIZE):
        block = tl.load(block_tables_ptr + request * stride_bt_row + start // BLOCK_SIZE)
        offsets = block * stride_kc_block + slots[:, None] * stride_kc_slot + kv_head * stride_kc_head + dims[None, :]
        valid = (start + slots) < seq_len
        kv_ok = valid[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + offsets, mask=kv_ok, other=0.0).to(tl.float32)
        v = tl.load(v_cache_ptr + offsets, mask=kv_ok, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale  # [GROUP_PAD, BLOCK_SIZE]
        scores = tl.where(valid[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        rescale = tl.exp(best - new_best)
        weights = tl.exp(scores - new_best[:, None])
        total = total * rescale + tl.sum(weights, axis=1)
        acc = acc * rescale[:, None] + tl.sum(weights[:, :, None] * v[None, :, :], axis=1)
        best = new_best
    out = acc / total[:, None]
    tl.store(
        out_ptr + request * stride_o_token + heads[:, None] * stride_o_head + dims[None, :],
        out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None] & dim_ok[None, :],
    )  # fmt: skip


def paged_decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
) -> torch.Tensor:
    # q: [B, heads, d], one token per request; caches: [num_blocks, block_size, kv_heads, d];
    # block_tables: [B, max_blocks]; seq_lens: [B] -> [B, heads, d]
    batch, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = key_cache.shape
    group = heads // kv_heads
    out = torch.empty_like(q)
    _paged_decode_kernel[(batch, kv_heads)](
        q, key_cache, value_cache, block_tables, seq_lens, out,
        1.0 / math.sqrt(head_dim),
        q.stride(0), q.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim,
        DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=block_size,
    )  # fmt: skip
    return out
