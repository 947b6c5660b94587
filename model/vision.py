"""The "patch" vision model of Mono-InternVL: no ViT, only a patch embedding.

Each tile goes through a strided convolution plus position embedding; pixel shuffle then merges
each 2x2 square of patches into one token before `mlp1` (in `mono_internvl.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monovl.model.config import VisionConfig


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.grid = config.image_size // config.patch_size
        # The class token is dropped by the patch model's output; the parameter is kept so the
        # checkpoint loads by name and nothing in it goes unread.
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, config.hidden_size))

    def patch_position_embedding(self, height: int, width: int) -> torch.Tensor:
        # -> [1, height * width, hidden]; bicubic resize of the patch grid part, in float32
        grid = self.position_embedding[:, 1:].float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        return grid.reshape(1, -1, height * width).permute(0, 2, 1).to(self.position_embedding.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: [tiles, 3, S, S] -> [tiles, (S / patch)^2, hidden]
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))
        _, _, height, width = patches.shape
        patches = patches.flatten(2).transpose(1, 2)
        return patches + self.patch_position_embedding(height, width).to(dtype)


class InternVisionPatchModel(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.embeddings = InternVisionEmbeddings(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.embeddings(pixel_values)


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    # x: [tiles, w, h, c] -> [tiles, w / factor, h / factor, c * factor^2], the reference's v2
    # view/permute sequence including the final swap back of height and width.
    n, w, h, c = x.shape
    x = x.reshape(n, w, h // factor, c * factor)
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, h // factor, w // factor, c * factor * factor)
    return x.permute(0, 2, 1, 3).contiguous()
