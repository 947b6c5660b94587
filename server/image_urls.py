"""Image bytes from an `image_url`: base64 `data:` URLs; remote http(s) only when enabled."""

from __future__ import annotations

import base64
import binascii
import re

from monovl.server.errors import APIError, bad_request

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def decode_data_url(url: str, max_bytes: int, param: str) -> bytes:
    match = _DATA_URL.match(url)
    if not match:
        raise bad_request("image_url must be a data: URL (data:image/png;base64,...)", param, "invalid_image_url")
    mime = (match["mime"] or "").lower()
    if not mime.startswith("image/"):
        raise bad_request(f"image_url has media type {mime or 'none'!r}; expected image/*", param, "invalid_image_url")
    if not match["b64"]:
        raise bad_request("image data URLs must be base64-encoded", param, "invalid_image_url")
    payload = url[match.end() :]
    if len(payload) * 3 // 4 > max_bytes:
        raise APIError(413, f"image is larger than {max_bytes} bytes", param=param, code="image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("image_url is not valid base64", param, "invalid_image_url") from None
