"""Dynamic tiling: grid choice over many aspect ratios, ties, strips, and pixel-exact tiles."""

import numpy as np
import pytest
import torch
from PIL import Image

from monovl.model.pixel_normalization import IMAGENET_MEAN, IMAGENET_STD, gather_normalized, normalize_tiles
from monovl.preprocessing.tiling import candidate_grids, closest_grid, tile_image, tiles_to_pixels

S = 448


def unique_best_grid(width: int, height: int, max_num: int) -> tuple[int, int] | None:
    """The grid whose columns/rows is strictly closest to width/height, or None on a tie."""
    grids = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if i * j <= max_num]
    diffs = sorted((abs(width / height - i / j), (i, j)) for i, j in grids)
    if len(diffs) > 1 and diffs[0][0] == diffs[1][0]:
        return None
    return diffs[0][1]


def test_candidates_are_every_grid_up_to_the_cap_by_area():
    grids = candidate_grids(1, 12)
    assert len(grids) == len(set(grids)) == sum(1 for i in range(1, 13) for j in range(1, 13) if i * j <= 12)
    areas = [i * j for i, j in grids]
    assert areas == sorted(areas) and areas[0] == 1 and areas[-1] == 12
    assert all(2 <= i * j <= 6 for i, j in candidate_grids(2, 6))


@pytest.mark.parametrize("max_num", [1, 2, 6, 12])
def test_grid_is_the_closest_aspect_ratio(max_num):
    rng = np.random.default_rng(max_num)
    checked = 0
    for _ in range(400):
        width, height = (int(v) for v in rng.integers(1, 5000, 2))
        expected = unique_best_grid(width, height, max_num)
        if expected is None:
            continue
        assert closest_grid(width, height, candidate_grids(1, max_num), S) == expected, (width, height)
        checked += 1
    assert checked > 200  # equal-ratio grids (1x1, 2x2, ...) tie often


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ((300, 300), (1, 1)),  # ratio ties 1x1, 2x2, 3x3: too small for the larger grids
        ((700, 700), (2, 2)),  # 490000 > 0.5 * 448^2 * 4 but not > 0.5 * 448^2 * 9
        ((1400, 1400), (3, 3)),  # large enough for 3x3 and the tie keeps the later one
        ((600, 300), (2, 1)),  # ties 2x1, 4x2: 180000 is not > 0.5 * 448^2 * 8
        ((1792, 896), (4, 2)),  # exactly 4x2 tiles of area; the later tie wins
        ((448, 4480), (1, 10)),  # a 1xN strip
        ((20000, 1), (12, 1)),  # an extreme strip takes the widest grid
        ((1, 20000), (1, 12)),
    ],
)
def test_exact_ties_and_strips(size, grid):
    assert closest_grid(*size, candidate_grids(1, 12), S) == grid


def test_tiles_are_crops_of_the_resized_image_then_a_thumbnail():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (500, 1000, 3), dtype=np.uint8))
    tiles = tile_image(image, 1, 12, S, use_thumbnail=True)
    assert len(tiles) == 3  # 2x1 grid + thumbnail
    resized = np.asarray(image.resize((2 * S, S), Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(tiles[0]), resized[:, :S])
    np.testing.assert_array_equal(np.asarray(tiles[1]), resized[:, S:])
    np.testing.assert_array_equal(np.asarray(tiles[2]), np.asarray(image.resize((S, S), Image.BICUBIC)))
    assert len(tile_image(image, 1, 1, S, use_thumbnail=True)) == 1  # no thumbnail for a single tile


def test_row_major_order_for_a_tall_grid():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (1000, 500, 3), dtype=np.uint8))
    tiles = tile_image(image, 1, 12, S, use_thumbnail=False)
    resized = np.asarray(image.resize((S, 2 * S), Image.BICUBIC))
    assert len(tiles) == 2
    np.testing.assert_array_equal(np.asarray(tiles[1]), resized[S:, :])


def test_tensor_is_normalized_imagenet_pixels_bit_for_bit():
    # every uint8 value in every channel, against torchvision's ToTensor + Normalize as torch ops
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    pixels[0, :256] = np.arange(256, dtype=np.uint8)[:, None]
    tiles = tiles_to_pixels([Image.fromarray(pixels), Image.fromarray(pixels[::-1])], S)
    assert tiles.shape == (2, S, S, 3) and tiles.dtype == torch.uint8
    x = normalize_tiles(tiles)
    assert x.shape == (2, 3, S, S) and x.dtype == torch.float32 and x.is_contiguous()
    expected = torch.from_numpy(np.stack([pixels, pixels[::-1]])).permute(0, 3, 1, 2).float().div(255)
    expected.sub_(torch.tensor(IMAGENET_MEAN)[:, None, None]).div_(torch.tensor(IMAGENET_STD)[:, None, None])
    assert torch.equal(x, expected)
    assert torch.equal(gather_normalized(tiles), expected)  # the lookup a GPU runs
