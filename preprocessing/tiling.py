"""Dynamic tiling of an RGB image into 448 px tiles plus a thumbnail, pixel-exact with the reference.

The grid search is the reference's own expressions (including the candidate set built by a set
comprehension and then stably sorted by area, which fixes the order in which exact ties are met),
because any other formulation risks a different tile on a tie. Its two `image.resize` calls run
through `resize`, the same resize cut into bands for several threads.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from monovl.preprocessing.resize import resize


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """All (columns, rows) with min_num <= columns * rows <= max_num, by area."""
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def closest_grid(width: int, height: int, grids: list[tuple[int, int]], tile_size: int) -> tuple[int, int]:
    aspect_ratio = width / height
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for grid in grids:
        diff = abs(aspect_ratio - grid[0] / grid[1])
        if diff < best_diff:
            best_diff = diff
            best = grid
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * grid[0] * grid[1]:
            best = grid
    return best


def tile_image(
    image: Image.Image, min_num: int, max_num: int, tile_size: int, use_thumbnail: bool
) -> list[Image.Image]:
    """Row-major crops of the image resized to the chosen grid, then the thumbnail if > 1 tile."""
    width, height = image.size
    columns, rows = closest_grid(width, height, candidate_grids(min_num, max_num), tile_size)
    resized = resize(image, (tile_size * columns, tile_size * rows))
    tiles = []
    for k in range(columns * rows):
        left, top = (k % columns) * tile_size, (k // columns) * tile_size
        tiles.append(resized.crop((left, top, left + tile_size, top + tile_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(resize(image, (tile_size, tile_size)))
    return tiles


def tiles_to_pixels(tiles: list[Image.Image], tile_size: int) -> torch.Tensor:
    """[tiles, S, S, 3] uint8 RGB: each tile bicubic-resized to S, as the reference's transform
    begins (a copy for the crops, which are S already)."""
    return torch.from_numpy(
        np.stack([np.asarray(t.resize((tile_size, tile_size), Image.BICUBIC), dtype=np.uint8) for t in tiles])
    )
