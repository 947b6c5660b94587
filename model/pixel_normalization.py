"""The reference's ToTensor and ImageNet Normalize of image tiles, on the device the model runs on.

Tiles travel from preprocessing as the uint8 pixels Pillow gives; the model's device turns them
into its input: a GPU does it cheaply and receives a quarter of float32's bytes, and the
preprocessing workers do not spend their time on it.
"""

from __future__ import annotations

import functools

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
