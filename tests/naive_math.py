"""Independent float64 math for Mono-InternVL, written from the model spec, for tests to compare to.

Nothing here imports monovl's model code: weights come in as a plain state dict, and every step
(packed wqkv split, RoPE, causal GQA softmax, both experts blended by the mask, pixel shuffle) is
spelled out with explicit indices and loops over heads.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def rope_angles(positions: list[int], head_dim: int, base: float, linear_factor: float = 1.0) -> torch.Tensor:
    """[tokens, head_dim / 2] angle of each rotated pair (i, i + d/2)."""
    half = head_dim // 2
    inv_freq = torch.tensor([base ** (-2.0 * i / head_dim) for i in range(half)], dtype=F64)
    pos = torch.tensor(positions, dtype=F64) / linear_factor
    return pos[:, None] * inv_freq[None, :]


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, d]; pair (i, i + d/2) rotated by angle i, as a complex multiplication."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)[:, None, :]
    return torch.cat([z.real, z.imag], dim=-1)


def split_wqkv(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    """[tokens, (heads + 2 kv_heads) d] -> q [tokens, heads, d], k, v [tokens, kv_heads, d].

    The packed layout: for KV head h, rows [h*(g+2)*d, (h+1)*(g+2)*d) hold query heads h*g..h*g+g-1,
    then the key, then the value.
    """
    g = heads // kv_heads
    q, k, v = [], [], []
    for h in range(kv_heads):
        base = h * (g + 2) * head_dim
        for j in range(g):
            q.append(qkv[:, base + j * head_dim : base + (j + 1) * head_dim])
        k.append(qkv[:, base + g * head_dim : base + (g + 1) * head_dim])
        v.append(qkv[:, base + (g + 1) * head_dim : base + (g + 2) * head_dim])
    return torch.stack(q, 1), torch.stack(k, 1), torch.stack(v, 1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q: [n, heads, d], k, v: [n, kv_heads, d] for one whole sequence -> [n, heads, d]."""
    n, heads, d = q.shape
    g = heads // k.shape[1]
    out = torch.zeros_like(q)
    for head in range(heads):
        kv = head // g
        scores = q[:, head] @ k[:, kv].T / math.sqrt(d)
        scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -math.inf)
        out[:, head] = torch.softmax(scores, -1) @ v[:, kv]
    return out


def silu_ffn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    w1, w2, w3 = (sd[f"{prefix}.{n}.weight"].to(F64) for n in ("w1", "w2", "w3"))
    a = x @ w1.T
    return (a * torch.sigmoid(a) * (x @ w3.T)) @ w2.T


def pixel_shuffle_v2(x: torch.Tensor) -> torch.Tensor:
    """x: [tiles, W, H, C] -> [tiles, W/2, H/2, 4C] with out[i, j, m] = x[2i + m // 2C, 2j + (m // C) % 2, m % C]."""
    n, w, h, c = x.shape
    out = torch.empty(n, w // 2, h // 2, 4 * c, dtype=x.dtype)
    for i in range(w // 2):
        for j in range(h // 2):
            for m_block in range(4):
                di, dj = m_block // 2, m_block % 2
                out[:, i, j, m_block * c : (m_block + 1) * c] = x[:, 2 * i + di, 2 * j + dj, :]
    return out


def embed_images(sd: dict, pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """[tiles, 3, S, S] -> [tiles, (S / patch / 2)^2, llm_hidden]: conv as a matmul over patches."""
    tiles, _, size, _ = pixel_values.shape
    grid = size // patch
    weight = sd["vision_model.embeddings.patch_embedding.weight"].to(F64)
    hidden = weight.shape[0]
    x = pixel_values.to(F64).reshape(tiles, 3, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    patches = x.reshape(tiles, grid, grid, -1) @ weight.reshape(hidden, -1).T
    patches = patches + sd["vision_model.embeddings.patch_embedding.bias"].to(F64)
    pos = sd["vision_model.embeddings.position_embedding"].to(F64)[0, 1:].reshape(grid, grid, hidden)
    patches = patches + pos  # rows of the patch grid are image rows; the 448 px grid needs no resize
    shuffled = pixel_shuffle_v2(patches).reshape(tiles, -1, 4 * hidden)
    mean = shuffled.mean(-1, keepdim=True)
    var = ((shuffled - mean) ** 2).mean(-1, keepdim=True)
    y = (shuffled - mean) / torch.sqrt(var + 1e-5) * sd["mlp1.0.weight"].to(F64) + sd["mlp1.0.bias"].to(F64)
    y = y @ sd["mlp1.1.weight"].to(F64).T + sd["mlp1.1.bias"].to(F64)
    y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    return y @ sd["mlp1.3.weight"].to(F64).T + sd["mlp1.3.bias"].to(F64)


def language_model_logits(
    sd: dict,
    llm: dict,
    input_ids: list[int],
    visual_mask: list[bool],
    visual_embeds: torch.Tensor | None,
) -> torch.Tensor:
    """Full-sequence forward in float64: [tokens, vocab] logits. `llm` is config.json's llm_config."""
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    d = llm["hidden_size"] // heads
    eps = llm["rms_norm_eps"]
    x = sd["language_model.model.tok_embeddings.weight"].to(F64)[torch.tensor(input_ids)]
    mask = torch.tensor(visual_mask, dtype=F64)[:, None]
    if visual_embeds is not None:
        x[torch.tensor(visual_mask)] = visual_embeds.to(F64)
    scaling = llm.get("rope_scaling") or {}
    factor = scaling.get("factor", 1.0) if scaling.get("type") == "linear" else 1.0
    base = float(llm["rope_theta"])
    n = len(input_ids)
    if scaling.get("type") == "dynamic" and n > llm["max_position_embeddings"]:
        f = scaling["factor"]
        base = base * (f * n / llm["max_position_embeddings"] - (f - 1)) ** (d / (d - 2))
    angles = rope_angles(list(range(n)), d, base, factor)
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}"
        h = rms_norm(x, sd[f"{p}.attention_norm.weight"].to(F64), eps)
        q, k, v = split_wqkv(h @ sd[f"{p}.attention.wqkv.weight"].to(F64).T, heads, kv_heads, d)
        attn = causal_attention(rotate_pairs(q, angles), rotate_pairs(k, angles), v)
        x = x + attn.reshape(n, heads * d) @ sd[f"{p}.attention.wo.weight"].to(F64).T
        h = rms_norm(x, sd[f"{p}.ffn_norm.weight"].to(F64), eps)
        x = x + silu_ffn(h, sd, f"{p}.feed_forward") * (1 - mask) + silu_ffn(h, sd, f"{p}.feed_forward_ve") * mask
    x = rms_norm(x, sd["language_model.model.norm.weight"].to(F64), eps)
    return x @ sd["language_model.output.weight"].to(F64).T
