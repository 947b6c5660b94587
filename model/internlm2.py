"""InternLM2 decoder with a visual-expert FFN per layer (the checkpoint's `language_model`).

Module names are the checkpoint's (`attention.wqkv`, `feed_forward_ve.w1`, ...), so loading is a
name match. Every forward takes a flat batch of tokens from many requests (`ForwardBatch`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.config import LLMConfig
from model.forward_batch import ForwardBatch, KVCache
from model.paged_attention import paged_attention
from model.rope import apply_rotary


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
    ) -> torch.Tensor:
        # x: [T, hidden]; wqkv packs, per KV head, its group of query heads, then one key, one value
        tokens = x.shape[0]
        group = self.heads // self.kv_heads
        qkv = self.wqkv(x).view(tokens, self.kv_heads, group + 2, self.head_dim)
        q = qkv[:, :, :group].reshape(tokens, self.heads, self.head_dim)
        k, v = qkv[:, :, group], qkv[:, :, group + 1]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = paged_attention(q, k, v, key_cache, value_cache, batch)
        return self.wo(out.reshape(tokens, self.heads * self.head_dim))


class ExpertRows(NamedTuple):
    """Which token rows take which expert; found once per forward, used by every layer."""

    visual: torch.Tensor  # rows of <IMG_CONTEXT> tokens -> feed_forward_ve
    text: torch.Tensor  # all other rows -> feed_forward

    @classmethod
    def of(cls, visual_mask: torch.Tensor) -> ExpertRows | None:
        """None when no token is visual: the layers then skip the split."""
        if not bool(visual_mask.any()):
            return None
        return cls(visual_mask.nonzero().squeeze(1), (~visual_mask).nonzero().squeeze(1))


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.feed_forward_ve = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        batch: ForwardBatch,
        expert_rows: ExpertRows | None,
    ) -> torch.Tensor:
        # x: [T, hidden]
        h = x + self.attention(self.attention_norm(x), cos, sin, key_cache, value_cache, batch)
        return h + self.routed_ffn(self.ffn_norm(h), expert_rows)

    def routed_ffn(self, x: torch.Tensor, rows: ExpertRows | None) -> torch.Tensor:
        # Each token runs exactly one expert: gather the image rows, run both groups, scatter back.
        if rows is None:
            return self.feed_forward(x)
        out = torch.empty_like(x)
        out[rows.visual] = self.feed_forward_ve(x[rows.visual])
        if rows.text.numel():
            out[rows.text] = self.feed_forward(x[rows.text])
        return out


class InternLM2Model(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        expert_rows: ExpertRows | None,
    ) -> torch.Tensor:
        # x: [T, hidden] input embeddings; cos, sin: [T, head_dim] -> [T, hidden] final hidden states
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, kv_cache.key[i], kv_cache.value[i], batch, expert_rows)
        return self.norm(x)


class InternLM2VEForCausalLM(nn.Module):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__()
        self.model = InternLM2Model(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
