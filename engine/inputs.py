"""What preprocessing hands to the engine: token ids, and the tiles of each image.

Tiles travel as the uint8 pixels Pillow gives; the model normalizes them where it runs
(model/pixel_normalization.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from monovl.model.pixel_normalization import normalize_tiles


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
