"""What preprocessing hands to the engine: token ids, and the tiles of each image.

Tiles travel as the uint8 pixels Pillow gives; `normalize_tiles` turns them into the model's input
(the reference's ToTensor and ImageNet Normalize) on the device the model runs on: a GPU does it
cheaply and receives a quarter of float32's bytes, and the preprocessing workers do not spend
their time on it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalized_values() -> np.ndarray:
    """[3, 256] float32: (v / 255 - mean) / std per channel, in the reference's float32 steps
    (torchvision's ToTensor, then Normalize)."""
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None]
    return (np.arange(256, dtype=np.float32)[None, :] / np.float32(255) - mean) / std


NORMALIZED = _normalized_values()


@dataclass(frozen=True)
class ImageInput:
    content_hash: str  # of the image bytes and the tiling settings: equal hashes, equal tiles
    pixels: torch.Tensor  # [tiles, 448, 448, 3] uint8 RGB, each tile as the reference resized it

    @property
    def num_tiles(self) -> int:
        return self.pixels.shape[0]

    def pixel_values(self) -> torch.Tensor:
        """[tiles, 3, 448, 448] float32: the reference's `pixel_values` for this image."""
        return normalize_tiles(self.pixels)


@dataclass(frozen=True)
class PromptInputs:
    prompt: str
    token_ids: list[int]
    images: list[ImageInput]
    image_spans: list[tuple[int, int]]  # [start, end) of each image's <IMG_CONTEXT> run in token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def normalize_tiles(pixels: torch.Tensor) -> torch.Tensor:
    """[tiles, S, S, 3] uint8 -> [tiles, 3, S, S] float32: the reference's ToTensor and Normalize.

    Each value is looked up in NORMALIZED, on the pixels' device, so every device gives the
    reference's float32 bits.
    """
    if pixels.device.type != "cpu":
        return gather_normalized(pixels)
    # numpy takes the uint8 values as indices as they are; torch would widen them to int64 first
    values = pixels.numpy()
    x = np.empty((values.shape[0], 3, *values.shape[1:3]), dtype=np.float32)
    for channel in range(3):
        np.take(NORMALIZED[channel], values[..., channel], out=x[:, channel])
    return torch.from_numpy(x)


def gather_normalized(pixels: torch.Tensor) -> torch.Tensor:
    """normalize_tiles as torch indexing, on the pixels' device (what a GPU runs)."""
    channels = torch.arange(3, device=pixels.device)[None, :, None, None]
    return _table_on(pixels.device)[channels, pixels.permute(0, 3, 1, 2).long()]


@functools.cache
def _table_on(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(NORMALIZED).to(device)  # once per device, not a copy per image
