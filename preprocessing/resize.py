"""Pillow's bicubic resize, cut into bands that resample on several threads, bit-exact with one call.

Pillow resizes in two passes: a horizontal one, in which each output row comes from one input row,
and a vertical one, in which each output column comes from one input column. A resize that keeps
the height runs the horizontal pass alone and one that keeps the width the vertical pass alone,
with the same coefficients as the full resize, since those depend only on the input and output
lengths of their own axis. So the horizontal pass can run on bands of rows and the vertical pass
on bands of columns, each band a resize of its own on a thread of its own (Pillow lets go of the
GIL while it resamples), and the bands pasted together are the one-call result to the bit. The
order of the passes must be Pillow's: since Pillow 13 the vertical pass runs first when the height
shrinks by more than twice as many pixels as the width.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from monovl.preprocessing.cpu_priority import IMAGE_NICENESS, lower_priority

MIN_BAND = 64  # rows or columns per band: thinner bands cost more in copies than they save
MAX_BANDS = 8  # each band's crop and paste is a copy; measured only up to 2 CPUs, so no more than this
Box = tuple[int, int, int, int]  # left, top, right, bottom


def cpus() -> int:
    """The CPUs this process may run on (a container's cpuset, not the host's count), at most MAX_BANDS."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(usable, MAX_BANDS))


_BANDS = ThreadPoolExecutor(
    max_workers=cpus(), thread_name_prefix="monovl-resize", initializer=lower_priority, initargs=(IMAGE_NICENESS,)
)


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image.resize(size)` of an RGB (or other 8-bit) image, pixel for pixel, on up to one band per
    CPU. ("P" and "1" images resize by nearest neighbour, not in two passes: not for them.)"""
    if image.size == size:
        return image.copy()
    width, height = size
    shrink_y, shrink_x = image.height - height, image.width - width
    vertical_first = shrink_y > 0 and shrink_y > 2 * shrink_x  # Pillow 13's order of the passes
    for vertical in (vertical_first, not vertical_first):
        if vertical and image.height != height:
            image = _vertical_pass(image, height)
        elif not vertical and image.width != width:
            image = _horizontal_pass(image, width)
    return image


def _spans(length: int) -> list[tuple[int, int]]:
    count = max(1, min(cpus(), length // MIN_BAND))
    step = -(-length // count)
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _horizontal_pass(image: Image.Image, width: int) -> Image.Image:
    bands = [(0, top, image.width, bottom) for top, bottom in _spans(image.height)]
    if len(bands) == 1:  # too small to share: no crop and paste
        return image.resize((width, image.height))
    pieces = _each(lambda box: image.crop(box).resize((width, box[3] - box[1])), bands)
    out = Image.new(image.mode, (width, image.height))
    for (_, top, _, _), piece in zip(bands, pieces, strict=True):
        out.paste(piece, (0, top))
    return out


def _vertical_pass(image: Image.Image, height: int) -> Image.Image:
    bands = [(left, 0, right, image.height) for left, right in _spans(image.width)]
    if len(bands) == 1:
        return image.resize((image.width, height))
    pieces = _each(lambda box: image.crop(box).resize((box[2] - box[0], height)), bands)
    out = Image.new(image.mode, (image.width, height))
    for (left, _, _, _), piece in zip(bands, pieces, strict=True):
        out.paste(piece, (left, 0))
    return out


def _each(work: Callable[[Box], Image.Image], items: list[Box]) -> list[Image.Image]:
    """work(item) for every item: the first on this thread, the rest on the pool's. No pool thread
    ever waits for another, so callers on many threads at once cannot starve each other."""
    futures = [_BANDS.submit(work, item) for item in items[1:]]
    return [work(items[0]), *(future.result() for future in futures)]
