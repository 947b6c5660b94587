"""Triton kernels that fuse the decoder's small element-wise steps, each equal to its torch form.

In a CUDA-graph decode step of the 2B model the GEMMs read the weights near the bandwidth bound,
and what is left is the tail of small kernels: an RMSNorm is eight of them, RoPE on q and k a
dozen, the KV write two more. Each kernel below does one such step in one launch and asks for rounding
where the reference rounds (each bfloat16 product and sum). In float32 they agree with the plain
path to float rounding (RoPE bit for bit). Compiled for bfloat16, RoPE can be one bfloat16 step off
torch on a few elements, likely the compiler folding an intermediate rounding; tests/test_cuda.py
bounds that. They run on CUDA, and on the CPU under TRITON_INTERPRET=1 for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr,
    eps, hidden,
    stride_x, stride_r, stride_o, stride_s,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RESIDUAL:  # the residual add, rounded to the activations' dtype as the reference's `h = x + f(x)`
        residual = tl.load(residual_ptr + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=ok)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / hidden
    normed = (xf * tl.rsqrt(variance + eps)).to(x.dtype)
    weight = tl.load(weight_ptr + cols, mask=ok, other=0.0)
    tl.store(out_ptr + row * stride_o + cols, (weight.to(tl.float32) * normed.to(tl.float32)).to(x.dtype), mask=ok)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual), x + residual); without a residual, (RMSNorm(x), x). x: [T, hidden]."""
    tokens, hidden = x.shape
    out = torch.empty_like(x)
    total = torch.empty_like(x) if residual is not None else x
    if tokens:
        _rms_norm_kernel[(tokens,)](
            x, residual if residual is not None else x, weight, out, total,
            eps, hidden,
            x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0), total.stride(0),
            HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(hidden),
        )  # fmt: skip
    return out, total


@triton.jit
def _rotate(x1, x2, c1, c2, s1, s2, DTYPE: tl.constexpr):
    # rotate-half RoPE on the two halves of a head: x * cos + cat(-x2, x1) * sin, rounded as torch does
    first = ((x1 * c1).to(DTYPE).to(tl.float32) + (-x2 * s1).to(DTYPE).to(tl.float32)).to(DTYPE)
    second = ((x2 * c2).to(DTYPE).to(tl.float32) + (x1 * s2).to(DTYPE).to(tl.float32)).to(DTYPE)
    return first, second


@triton.jit
def _rotary_cache_kernel(
    qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_qkv, stride_cs, stride_q_token, stride_q_head, stride_cache_slot, stride_cache_head,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    dtype = q_ptr.dtype.element_ty
    dims = tl.arange(0, HALF_PAD)
    dim_ok = dims < HALF
    # cos/sin are float32; the reference casts them to the activations' dtype before rotating
    c1 = tl.load(cos_ptr + token * stride_cs + dims, mask=dim_ok, other=0.0).to(dtype).to(tl.float32)
    c2 = tl.load(cos_ptr + token * stride_cs + HALF + dims, mask=dim_ok, other=0.0).to(dtype).to(tl.float32)
    s1 = tl.load(sin_ptr + token * stride_cs + dims, mask=dim_ok, other=0.0).to(dtype).to(tl.float32)
    s2 = tl.load(sin_ptr + token * stride_cs + HALF + dims, mask=dim_ok, other=0.0).to(dtype).to(tl.float32)
    head_dim = 2 * HALF
    # wqkv packs, per KV head, its GROUP query heads, then one key, then one value
    base = qkv_ptr + token * stride_qkv + kv_head * (GROUP + 2) * head_dim
    group = tl.arange(0, GROUP_PAD)
    ok = (group < GROUP)[:, None] & dim_ok[None, :]
    rows = group[:, None] * head_dim + dims[None, :]
    x1 = tl.load(base + rows, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(base + rows + HALF, mask=ok, other=0.0).to(tl.float32)
    first, second = _rotate(x1, x2, c1[None, :], c2[None, :], s1[None, :], s2[None, :], dtype)
    q_rows = q_ptr + token * stride_q_token + (kv_head * GROUP + group)[:, None] * stride_q_head + dims[None, :]
    tl.store(q_rows, first, mask=ok)
    tl.store(q_rows + HALF, second, mask=ok)
    k1 = tl.load(base + GROUP * head_dim + dims, mask=dim_ok, other=0.0).to(tl.float32)
    k2 = tl.load(base + GROUP * head_dim + HALF + dims, mask=dim_ok, other=0.0).to(tl.float32)
    k_first, k_second = _rotate(k1, k2, c1, c2, s1, s2, dtype)
    slot = tl.load(slots_ptr + token)
    cache_row = slot * stride_cache_slot + kv_head * stride_cache_head + dims
    tl.store(k_cache_ptr + cache_row, k_first.to(k_cache_ptr.dtype.element_ty), mask=dim_ok)
    tl.store(k_cache_ptr + cache_row + HALF, k_second.to(k_cache_ptr.dtype.element_ty), mask=dim_ok)
    v1 = tl.load(base + (GROUP + 1) * head_dim + dims, mask=dim_ok, other=0.0)
    v2 = tl.load(base + (GROUP + 1) * head_dim + HALF + dims, mask=dim_ok, other=0.0)
    tl.store(v_cache_ptr + cache_row, v1.to(v_cache_ptr.dtype.element_ty), mask=dim_ok)
    tl.store(v_cache_ptr + cache_row + HALF, v2.to(v_cache_ptr.dtype.element_ty), mask=dim_ok)


def rotary_and_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """RoPE on q and k from the packed wqkv output, K and V written to their slots; returns q.

    qkv: [T, (heads + 2 * kv_heads) * d]; cos, sin: [T, d] float32; caches: [blocks, block_size,
    kv_heads, d]; slots: [T] -> q: [T, heads, d]
    """
    tokens = qkv.shape[0]
    _, _, kv_heads, head_dim = key_cache.shape
    group = heads // kv_heads
    q = torch.empty(tokens, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    if tokens:
        k_flat = key_cache.view(-1, kv_heads, head_dim)
        _rotary_cache_kernel[(tokens, kv_heads)](
            qkv, cos, sin, q, k_flat, value_cache.view(-1, kv_heads, head_dim), slots,
            qkv.stride(0), cos.stride(0), q.stride(0), q.stride(1), k_flat.stride(0), k_flat.stride(1),
            GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HALF=head_dim // 2,
            HALF_PAD=triton.next_power_of_2(head_dim // 2),
        )  # fmt: skip
    return q


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, width, stride_in, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < width
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=ok, other=0.0)
    up = tl.load(gate_up_ptr + row * stride_in + width + cols, mask=ok, other=0.0)
    g = gate.to(tl.float32)
    activated = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # silu, rounded like torch's
    tl.store(out_ptr + row * stride_out + cols, (activated.to(tl.float32) * up.to(tl.float32)).to(gate.dtype), mask=ok)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [T, 2 * I] (w1's then w3's outputs) -> [T, I]."""
    tokens, double = gate_up.shape
    width = double // 2
    out = torch.empty(tokens, width, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    if tokens:
        _silu_mul_kernel[(tokens, triton.cdiv(width, block))](
            gate_up, out, width, gate_up.stride(0), out.stride(0), BLOCK=block
        )
    return out
