"""Mono-InternVL: patch embedding + `mlp1` feeding image tokens into the InternLM2-VE decoder."""

from __future__ import annotations

import torch
from torch import nn

from monovl.model.config import ModelConfig
from monovl.model.fast_path import FastPath
from monovl.model.forward_batch import ForwardBatch, KVCache
from monovl.model.internlm2 import PLAIN, InternLM2VEForCausalLM
from monovl.model.onednn_linear import reorder_linears
from monovl.model.rope import RotaryEmbedding
from monovl.model.vision import InternVisionPatchModel, pixel_shuffle


class MonoInternVL(nn.Module):
    def __init__(self, config: ModelConfig, fast: FastPath = PLAIN) -> None:
        super().__init__()
        self.config = config
        self.fast = fast  # the optional kernels every forward uses (model/fast_path.py)
        vit_hidden = config.vision.hidden_size * config.shuffle_factor**2
        llm_hidden = config.llm.hidden_size
        self.vision_model = InternVisionPatchModel(config.vision)
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vit_hidden),
            nn.Linear(vit_hidden, llm_hidden),
            nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden),
        )
        self.language_model = InternLM2VEForCausalLM(config.llm, packed_experts=fast.silu or fast.experts)
        self._rotary: RotaryEmbedding | None = None

    @property
    def rotary(self) -> RotaryEmbedding:
        """The rotary tables, on the device the weights live on (made on first use there)."""
        if self._rotary is None or self._rotary.device != self.device:
            self._rotary = RotaryEmbedding(self.config.llm, device=self.device)
        return self._rotary

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.model.tok_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.model.tok_embeddings.weight.device

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [tiles, 3, 448, 448] -> [tiles, num_image_token, llm_hidden]
        patches = self.vision_model(pixel_values)
        tiles, count, channels = patches.shape
        side = int(count**0.5)
        grid = pixel_shuffle(patches.reshape(tiles, side, side, channels), self.config.shuffle_factor)
        return self.mlp1(grid.reshape(tiles, -1, grid.shape[-1]))

    def forward(
        self, batch: ForwardBatch, kv_cache: KVCache, cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        # -> [T, llm_hidden] final hidden states (normed); logits come from compute_logits. cos_sin: the
        # rotary angles of the batch's positions when the caller holds them (a CUDA graph's buffers).
        x = self.language_model.model.tok_embeddings(batch.input_ids)
        rows = batch.expert_rows
        if rows is not None:
            x = x.index_copy(0, rows.visual, batch.visual_embeds.to(x.dtype))
        cos, sin = cos_sin or self.rotary.cos_sin(batch.positions, batch.rope_lens, batch.positions_end)
        return self.language_model.model(x, cos, sin, kv_cache, batch, rows, self.fast)

    def lay_out_weights(self) -> None:
        """Every linear layer reordered for oneDNN, when self.fast runs it. The loader calls it once.
        (The experts' packed layout is the loader's too, as it reads them: `pack_expert_weights`.)"""
        if self.fast.onednn:
            reorder_linears(self)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, llm_hidden] -> [N, vocab] float32
        return self.language_model.output(hidden).float()
