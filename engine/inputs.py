"""What preprocessing hands to the engine: token ids, and the tiles of each image."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageInput:
    content_hash: str  # of the image bytes and the tiling settings: equal hashes, equal tiles
    pixel_values: torch.Tensor  # [tiles, 3, 448, 448] float32, normalized

    @property
    def num_tiles(self) -> int:
        return self.pixel_values.shape[0]


@dataclass(frozen=True)
class PromptInputs:
    prompt: str
    token_ids: list[int]
    images: list[ImageInput]
    image_spans: list[tuple[int, int]]  # [start, end) of each image's <IMG_CONTEXT> run in token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)
