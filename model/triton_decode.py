"""Paged-attention decode kernel in Triton: one query token per request, K/V read in place.

The torch path gathers each request's context into a new tensor before attending; this kernel
walks the block table instead, so decode reads every cached byte once. A single request's context
is split into partitions that run in parallel (flash-decoding): one program per (request, KV
head, partition) keeps a running softmax over its tokens for the whole group of query heads that
share the KV head, and a second kernel merges the partitions. Without the split one request
decodes on 8 programs (one per KV head) of a GPU's 132 multiprocessors. The partition size is
chosen per call (`partition_size`): long partitions for a full batch, short ones for a few requests,
so that a single request's context still spreads over the GPU.

The number of partitions follows the block table's width, not the requests' lengths, so a CUDA
graph captured with a fixed table width replays for any context that fits it. It is a run-time
argument, not a compile-time one: eager steps of every table width share one compiled kernel, and
a busy engine never stops to compile another. It runs on CUDA,
and on the CPU under TRITON_INTERPRET=1 for tests.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

PARTITIONS = (256, 128, 64)  # context tokens per program, the longest that still fills the GPU wins
TILE = 64  # tokens per inner step
PROGRAMS_PER_SM = 2  # the least partition programs a call should launch, per multiprocessor
MAX_MERGED = 128  # partitions per request at most, when shorter ones are chosen (the merge holds them all)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def partition_size(batch: int, kv_heads: int, table_tokens: int, device: torch.device) -> int:
    """The longest partition whose programs number at least PROGRAMS_PER_SM per multiprocessor.

    Longer partitions mean fewer partial results to merge; shorter ones more programs reading at
    once, which a small batch needs: one request of 1,600 tokens with 8 KV heads gives 56 programs
    of 256 tokens for an H200's 132 multiprocessors, 200 of 64. It depends on the block table's
    width, not the requests' lengths, so a captured CUDA graph keeps its partitions on replay; a
    graph's table is as wide as the longest context it serves (8,192 tokens by default), so there one
    request gets partitions of 128, 13 of them busy at 1,600 tokens.
    """
    wanted = PROGRAMS_PER_SM * _multiprocessors(device)
    chosen = PARTITIONS[0]
    for size in PARTITIONS:
        partitions = triton.cdiv(table_tokens, size)
        if size != PARTITIONS[0] and partitions > MAX_MERGED:
            break
        chosen = size
        if batch * kv_heads * partitions >= wanted:
            break
    return chosen


@triton.jit(do_not_specialize=["stride_bt_row"])  # table widths vary step to step: one compile for all
def _partition_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    best_ptr, total_ptr, acc_ptr,
    scale,
    stride_q_token, stride_q_head,
    stride_kc_block, stride_kc_slot, stride_kc_head,
    stride_bt_row,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, PARTITION: tl.constexpr, TILE: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    # PARTITION stays a compile-time constant: one compile for each of the three sizes
    request = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + request)
    first = part * PARTITION
    if first >= seq_len:
        return
    group = tl.arange(0, GROUP_PAD)
    heads = kv_head * GROUP + group
    head_ok = group < GROUP
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + request * stride_q_token + heads[:, None] * stride_q_head + dims[None, :],
        mask=head_ok[:, None] & dim_ok[None, :], other=0.0,
    ).to(k_cache_ptr.dtype.element_ty)  # fmt: skip
    best = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    last = tl.minimum(first + PARTITION, seq_len)
    for start in range(first, last, TILE):
        tokens = start + tl.arange(0, TILE)
        valid = tokens < last
        block = tl.load(block_tables_ptr + request * stride_bt_row + tokens // BLOCK_SIZE, mask=valid, other=0)
        rows = block * stride_kc_block + (tokens % BLOCK_SIZE) * stride_kc_slot + kv_head * stride_kc_head
        kv_ok = valid[:, None] & dim_ok[None, :]
        k = tl.load(k_cache_ptr + rows[:, None] + dims[None, :], mask=kv_ok, other=0.0)
        v = tl.load(v_cache_ptr + rows[:, None] + dims[None, :], mask=kv_ok, other=0.0)
        if IEEE:  # noqa: SIM108 (a compile-time branch of the Triton kernel)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(valid[None, :], scores * scale, float("-inf"))  # [GROUP_PAD, TILE]
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        rescale = tl.exp(best - new_best)
        weights = tl.exp(scores - new_best[:, None])
        total = total * rescale + tl.sum(weights, axis=1)
        if IEEE:  # noqa: SIM108 (a compile-time branch of the Triton kernel)
            update = tl.dot(weights, v, input_precision="ieee")
        else:
            update = tl.dot(weights.to(v.dtype), v)
        acc = acc * rescale[:, None] + update
        best = new_best
    stat = (request * (tl.num_programs(1) * GROUP) + heads) * tl.num_programs(2) + part
    tl.store(best_ptr + stat, best, mask=head_ok)
    tl.store(total_ptr + stat, total, mask=head_ok)
    tl.store(acc_ptr + stat[:, None] * DIM_PAD + dims[None, :], acc, mask=head_ok[:, None])


@triton.jit(do_not_specialize=["num_partitions"])
def _merge_kernel(
    best_ptr, total_ptr, acc_ptr, seq_lens_ptr, out_ptr,
    num_partitions, stride_o_token, stride_o_head,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, PARTITION: tl.constexpr, PARTS_PAD: tl.constexpr,
):  # fmt: skip
    request = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + request)
    parts = tl.arange(0, PARTS_PAD)
    used = parts < tl.cdiv(seq_len, PARTITION)
    base = (request * tl.num_programs(1) + head) * num_partitions
    best = tl.load(best_ptr + base + parts, mask=used, other=float("-inf"))
    total = tl.load(total_ptr + base + parts, mask=used, other=0.0)
    dims = tl.arange(0, DIM_PAD)
    acc = tl.load(acc_ptr + (base + parts)[:, None] * DIM_PAD + dims[None, :], mask=used[:, None], other=0.0)
    overall = tl.max(best, axis=0)
    weight = tl.where(used, tl.exp(best - overall), 0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
    tl.store(
        out_ptr + request * stride_o_token + head * stride_o_head + dims,
        out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM,
    )  # fmt: skip


def paged_decode(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    partition: int | None = None,
) -> torch.Tensor:
    # q: [B, heads, d], one token per request; caches: [num_blocks, block_size, kv_heads, d];
    # block_tables: [B, max_blocks]; seq_lens: [B] int32, each at least 1; partition: context tokens
    # per program, a multiple of TILE (None: partition_size's choice) -> [B, heads, d]
    batch, heads, head_dim = q.shape
    _, block_size, kv_heads, _ = key_cache.shape
    group = heads // kv_heads
    table_tokens = block_tables.shape[1] * block_size
    partition = partition or partition_size(batch, kv_heads, table_tokens, q.device)
    num_partitions = triton.cdiv(table_tokens, partition)
    dim_pad = max(16, triton.next_power_of_2(head_dim))  # tl.dot wants every side at least 16
    stats = torch.empty(batch, heads, num_partitions, device=q.device, dtype=torch.float32)
    total = torch.empty_like(stats)
    acc = torch.empty(batch, heads, num_partitions, dim_pad, device=q.device, dtype=torch.float32)
    _partition_kernel[(batch, kv_heads, num_partitions)](
        q, key_cache, value_cache, block_tables, seq_lens,
        stats, total, acc,
        1.0 / math.sqrt(head_dim),
        q.stride(0), q.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, DIM_PAD=dim_pad,
        BLOCK_SIZE=block_size, PARTITION=partition, TILE=TILE, IEEE=key_cache.dtype == torch.float32,
    )  # fmt: skip
    out = torch.empty_like(q)
    _merge_kernel[(batch, heads)](
        stats, total, acc, seq_lens, out,
        num_partitions, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, DIM_PAD=dim_pad, PARTITION=partition,
        PARTS_PAD=max(16, triton.next_power_of_2(num_partitions)),
    )  # fmt: skip
    return out
