"""Decode untrusted image bytes into an RGB PIL image, checking the size before decoding."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class ImageError(ValueError):
    """Image bytes that cannot be served: unreadable, unsupported, truncated or too large."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit, found from its header before decoding."""


MAX_IMAGE_PIXELS = 64_000_000


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The first frame as RGB (alpha dropped, not composited), as the reference's convert('RGB')."""
    if not data:
        raise ImageError("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageError(f"image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
            image.load()
            return image.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"not a readable image; supported formats: {', '.join(SUPPORTED_FORMATS)}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image is too large: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"image could not be decoded ({type(e).__name__}: {e})") from None
