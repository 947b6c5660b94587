"""InternLM2 decoder with a visual-expert FFN per layer (the checkpoint's `language_model`).

Module names are the checkpoint's (`attention.wqkv`, `feed_forward_ve.w1`, ...), so loading is a
name match. Every forward takes a flat batch of tokens from many requests (`ForwardBatch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monovl.model.config import LLMConfig
from monovl.model.fast_path import FastPath
from monovl.model.forward_batch import ExpertRows, ForwardBatch, KVCache
from monovl.model.paged_attention import paged_attention, write_kv
from monovl.model.rope import apply_rotary

try:
    from monovl.model.fused_ops import rms_norm, rotary_and_cache, silu_mul
except ImportError:  # Triton is optional: FastPath.parse turns these kernels on only where it imports
    rms_norm = rotary_and_cache = silu_mul = None  # type: ignore[assignment]

PLAIN = FastPath()


class InternLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, hidden]; normalized in float32 as the reference does
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class InternLM2MLP(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def activate(gate_up: torch.Tensor, fast: FastPath) -> torch.Tensor:
    # gate_up: [T, 2 * I], w1's outputs then w3's -> silu(gate) * up
    if fast.silu:
        return silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class InternLM2Attention(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.wqkv = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=config.bias)
        self.wo = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        batch: ForwardBatch,
        fast: FastPath = PLAIN,
    ) -> torch.Tensor:
        # x: [T, hidden]; wqkv packs, per KV head, its group of query heads, then one key, one value
        tokens = x.shape[0]
        group = self.heads // self.kv_heads
        qkv = self.wqkv(x)
        if fast.rotary:
            q = rotary_and_cache(qkv, cos, sin, key_cache, value_cache, batch.slot_mapping, self.heads)
        else:
            qkv = qkv.view(tokens, self.kv_heads, group + 2, self.head_dim)
            q = apply_rotary(qkv[:, :, :group].reshape(tokens, self.heads, self.head_dim), cos, sin)
            k, v = apply_rotary(qkv[:, :, group], cos, sin), qkv[:, :, group + 1]
            write_kv(key_cache, value_cache, k, v, batch.slot_mapping)
        out = paged_attention(q, key_cache, value_cache, batch)
        return self.wo(out.reshape(tokens, self.heads * self.head_dim))


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: LLMConfig, packed_experts: bool = False) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.feed_forward_ve = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.packed_experts = packed_experts
        if packed_experts:
            # Both experts' w1|w3 as [2, 2 * I, hidden] and w2 as [2, hidden, I] (0: text, 1: visual),
            # for the one-GEMM and grouped-GEMM kernels. Not in the state dict: the experts' Linear
            # weights keep the checkpoint's names and are views of these (`pack_expert_weights`).
            inter, hidden = config.intermediate_size, config.hidden_size
            self.register_buffer("w13", torch.empty(2, 2 * inter, hidden), persistent=False)
            self.register_buffer("w2", torch.empty(2, hidden, inter), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        batch: ForwardBatch,
        expert_rows: ExpertRows | None,
        fast: FastPath,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: [T, hidden]. Plain: returns (hidden state, None). Fused norm: the hidden state is
        # x + residual, and the add happens inside the next norm; returns (FFN output, residual).
        if fast.norm:
            normed, residual = rms_norm(x, self.attention_norm.weight, self.attention_norm.eps, residual)
            attended = self.attention(normed, cos, sin, key_cache, value_cache, batch, fast)
            normed, residual = rms_norm(attended, self.ffn_norm.weight, self.ffn_norm.eps, residual)
            return self.routed_ffn(normed, expert_rows, fast), residual
        if residual is not None:
            x = x + residual
        h = x + self.attention(self.attention_norm(x), cos, sin, key_cache, value_cache, batch, fast)
        return h + self.routed_ffn(self.ffn_norm(h), expert_rows, fast), None

    def routed_ffn(self, x: torch.Tensor, rows: ExpertRows | None, fast: FastPath = PLAIN) -> torch.Tensor:
        # Each token runs exactly one expert.
        if fast.experts:
            return self.grouped_ffn(x, rows, fast)
        if rows is None:
            return self.expert(x, 0, fast)
        # gather the image rows, run both groups, scatter back
        out = torch.empty_like(x)
        out[rows.visual] = self.expert(x[rows.visual], 1, fast)
        if rows.text.numel():
            out[rows.text] = self.expert(x[rows.text], 0, fast)
        return out

    def expert(self, x: torch.Tensor, k: int, fast: FastPath) -> torch.Tensor:
        # k: 0 feed_forward (text), 1 feed_forward_ve (visual)
        if fast.silu or fast.experts:  # w1|w3 as one GEMM on the packed weights
            return F.linear(activate(F.linear(x, self.w13[k]), fast), self.w2[k])
        return (self.feed_forward, self.feed_forward_ve)[k](x)

    def grouped_ffn(self, x: torch.Tensor, rows: ExpertRows | None, fast: FastPath) -> torch.Tensor:
        if rows is None:
            return self.expert(x, 0, fast)
        ordered = x[rows.order]
        gate_up = torch._grouped_mm(ordered, self.w13.transpose(1, 2), offs=rows.offsets)
        down = torch._grouped_mm(activate(gate_up, fast), self.w2.transpose(1, 2), offs=rows.offsets)
        return torch.empty_like(x).index_copy_(0, rows.order, down)


_EXPERTS = ("feed_forward", "feed_forward_ve")  # packed in this order: 0 text, 1 visual


def pack_expert_weights(
    state: dict[str, torch.Tensor], layer: str
) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """A packed layer's `w13` and `w2` from the checkpoint's expert weights (`state`, the layer's
    names under the prefix `layer`), and those weights again as views of them, by name, so that the
    values are held once."""
    prefix = f"{layer}." if layer else ""
    w1, w3, w2 = ([state[f"{prefix}{e}.{w}.weight"] for e in _EXPERTS] for w in ("w1", "w3", "w2"))
    inter = w1[0].shape[0]
    w13 = torch.stack([torch.cat([a, b]) for a, b in zip(w1, w3, strict=True)])
    w2_packed = torch.stack(w2)
    views = {}
    for k, expert in enumerate(_EXPERTS):
        views[f"{prefix}{expert}.w1.weight"] = w13[k, :inter]
        views[f"{prefix}{expert}.w3.weight"] = w13[k, inter:]
        views[f"{prefix}{expert}.w2.weight"] = w2_packed[k]
    return (w13, w2_packed), views


class InternLM2Model(nn.Module):
    def __init__(self, config: LLMConfig, packed_experts: bool = False) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            InternLM2DecoderLayer(config, packed_experts) for _ in range(config.num_hidden_layers)
        )
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        expert_rows: ExpertRows | None,
        fast: FastPath = PLAIN,
    ) -> torch.Tensor:
        # x: [T, hidden] input embeddings; cos, sin: [T, head_dim] -> [T, hidden] final hidden states
        residual = None
        for i, layer in enumerate(self.layers):
            x, residual = layer(x, residual, cos, sin, kv_cache.key[i], kv_cache.value[i], batch, expert_rows, fast)
        if fast.norm:
            return rms_norm(x, self.norm.weight, self.norm.eps, residual)[0]
        return self.norm(x)


class InternLM2VEForCausalLM(nn.Module):
    def __init__(self, config: LLMConfig, packed_experts: bool = False) -> None:
        super().__init__()
        self.model = InternLM2Model(config, packed_experts)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
