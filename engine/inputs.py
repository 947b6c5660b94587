"""What preprocessing hands to the engine: token ids, and the tiles of each image."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageInput:
    content_hash: str  # of the image bytes and the tiling settings: equal hashes, equal tiles
    pixels: torch.Tensor  # [tiles, 448, 448, 3] uint8 RGB; the engine normalizes them on its device

    @property
    def num_tiles(self) -> int:
        return self.pixels.shape[0]


@dataclass(frozen=True)
class PromptInputs:
    prompt: str
    token_ids: list[int]
    images: list[ImageInput]
    image_spans: list[tuple[int, int]]  # [start, end) of each image's <IMG_CONTEXT> run in token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)
