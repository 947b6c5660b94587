"""Rotary position embedding (rotate-half form) with null, linear and dynamic-NTK scaling.

The reference computes cos/sin in float32 from `inv_freq = 1 / base ** (arange(0, d, 2) / d)` and
casts them to the activations' dtype before rotating; the same expressions are used here so the
float32 values agree bit for bit.

Dynamic NTK: the reference rescales the base from the length of the sequence seen by the forward
that computes a token (the whole prompt for prompt tokens, position + 1 for a decoded token), and
only when that length exceeds `max_position_embeddings`. Callers pass that length per token as
`rope_lens`; keys keep the rotation they were written with.
"""

from __future__ import annotations

import torch

from monovl.model.config import LLMConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim]
    cos = cos.to(x.dtype)[:, None, :]
    sin = sin.to(x.dtype)[:, None, :]
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding:
    """cos/sin tables at explicit positions; not an nn.Module, so nothing reaches the state dict."""

    def __init__(self, config: LLMConfig, device: torch.device | str = "cpu") -> None:
        self.dim = config.head_dim
        self.base = config.rope_theta
        self.max_position_embeddings = config.max_position_embeddings
        scaling = config.rope_scaling
        self.linear_factor = scaling.factor if scaling and scaling.kind == "linear" else None
        self.dynamic_factor = scaling.factor if scaling and scaling.kind == "dynamic" else None
        self.device = torch.device(device)
        self.inv_freq = self._inv_freq(self.base)
        self._cos = torch.empty(0, self.dim, device=self.device)
        self._sin = torch.empty(0, self.dim, device=self.device)
        self._grow(self.max_position_embeddings)

    def _inv_freq(self, base: float) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, device=self.device).float() / self.dim
        return 1.0 / (base**exponents)

    def _angles(self, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        t = positions.to(inv_freq.dtype)
        if self.linear_factor is not None:
            t = t / self.linear_factor
        freqs = t[:, None] * inv_freq[None, :]
        return torch.cat((freqs, freqs), dim=-1)

    def _grow(self, length: int) -> None:
        if length <= self._cos.shape[0]:
            return
        emb = self._angles(torch.arange(length, device=self.device), self.inv_freq)
        self._cos, self._sin = emb.cos(), emb.sin()

    def _dynamic_base(self, seq_len: int) -> float:
        factor = self.dynamic_factor
        assert factor is not None
        scale = factor * seq_len / self.max_position_embeddings - (factor - 1)
        return self.base * scale ** (self.dim / (self.dim - 2))

    def cos_sin(
        self, positions: torch.Tensor, rope_lens: torch.Tensor | None = None, positions_end: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions, rope_lens: [tokens] -> cos, sin: [tokens, head_dim] float32. positions_end (one past
        # the largest position) is known on the host by the engine: then nothing waits for the device.
        if positions_end is None:
            positions_end = int(positions.max()) + 1 if positions.numel() else 0
        self._grow(positions_end)
        cos, sin = self._cos[positions], self._sin[positions]
        if self.dynamic_factor is None or rope_lens is None:
            return cos, sin
        for seq_len in torch.unique(rope_lens[rope_lens > self.max_position_embeddings]).tolist():
            rows = (rope_lens == seq_len).nonzero().squeeze(1)
            emb = self._angles(positions[rows], self._inv_freq(self._dynamic_base(int(seq_len))))
            cos[rows], sin[rows] = emb.cos(), emb.sin()
        return cos, sin
