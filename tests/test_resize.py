"""The banded resize gives Pillow's one-call bicubic resize to the bit, in either order of passes."""

import numpy as np
import pytest
from PIL import Image

import monovl.preprocessing.resize as banded


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("cpus", [1, 2, 5])
def test_equals_pillow_for_many_sizes(monkeypatch, cpus):
    monkeypatch.setattr(banded, "cpus", lambda: cpus)
    rng = np.random.default_rng(cpus)
    orders = {True: 0, False: 0}
    for trial in range(60):
        width, height = (int(v) for v in rng.integers(1, 700, 2))
        size = [int(v) for v in rng.integers(1, 900, 2)]
        if trial % 4 == 0:
            size[1] = max(1, height // 5)  # height shrinks far more than width: the vertical pass first
        if trial % 7 == 0:
            size[0] = width  # one pass only
        image = random_image(rng, width, height)
        shrink_y, shrink_x = height - size[1], width - size[0]
        orders[shrink_y > 0 and shrink_y > 2 * shrink_x] += 1
        expected = np.asarray(image.resize(tuple(size)))
        assert np.array_equal(np.asarray(banded.resize(image, tuple(size))), expected), (width, height, size)
    assert orders[True] and orders[False]


def test_the_tile_grid_and_thumbnail_of_a_photo_size(monkeypatch):
    monkeypatch.setattr(banded, "cpus", lambda: 4)
    image = random_image(np.random.default_rng(0), 1600, 1200)
    for size in [(1792, 1344), (448, 448)]:
        assert np.array_equal(np.asarray(banded.resize(image, size)), np.asarray(image.resize(size)))


def test_the_same_size_is_a_copy():
    image = random_image(np.random.default_rng(1), 30, 20)
    copy = banded.resize(image, (30, 20))
    assert copy is not image and np.array_equal(np.asarray(copy), np.asarray(image))
