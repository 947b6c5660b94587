import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from monovl.preprocessing.image_decode import ImageError, decode_image
from tests.conftest import png_bytes


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_formats_decode_to_rgb(fmt):
    image = decode_image(png_bytes(40, 30, fmt=fmt))
    assert image.mode == "RGB" and image.size == (40, 30)


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent red stays red
    image = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert image.getpixel((0, 0)) == (200, 0, 0)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "CMYK", "I;16"])
def test_other_modes_convert_like_pil(mode):
    source = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = encode(source, fmt)
    assert np.array_equal(np.asarray(decode_image(data)), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data).getpixel((0, 0)) == (255, 0, 0)


def test_huge_header_is_refused_before_decoding():
    with pytest.raises(ImageError, match="limit"):
        decode_image(png_header_only(30000, 30000), max_pixels=64_000_000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not a readable image"),
        (png_bytes(64, 64)[:200], "could not be decoded"),
        (encode(Image.new("RGB", (4, 4)), "TIFF"), "not a readable image"),
    ],
)
def test_bad_bytes_are_a_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)
