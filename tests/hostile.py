"""Hostile and odd requests for the reliability tests and `tests/reliability_run.py`.

`HOSTILE` must each get a 4xx in OpenAI's error shape; `ODD_BUT_VALID` must be served (200).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image


def _png(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    channels = {"RGB": 3, "RGBA": 4}.get(mode, 3)
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8)).convert(mode)


def bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A PNG whose header claims `width` x `height` with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def hundred_mib() -> Iterator[bytes]:
    """A 100 MiB request body in 1 MiB chunks: a chunked upload with no Content-Length."""
    for _ in range(100):
        yield b"x" * 2**20


def image_message(url: str, text: str = "What is this?") -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}
    ]


USER = [{"role": "user", "content": "hi"}]


def hostile_requests(max_images: int = 8) -> list[tuple[str, bytes | dict]]:
    """(name, body): raw bytes are sent as they are, dicts as JSON."""
    good = data_url(_png(_noise(64, 64)))
    cases: list[tuple[str, bytes | dict]] = [
        ("malformed json", b'{"messages": [}'),
        ("not an object", b"[1, 2, 3]"),
        ("empty body", b""),
        ("binary body", bytes(range(256))),
        ("messages not a list", {"messages": "hello"}),
        ("content a number", {"messages": [{"role": "user", "content": 5}]}),
        ("part without type", {"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
        ("unknown part type", {"messages": [{"role": "user", "content": [{"type": "input_audio", "x": 1}]}]}),
        ("empty messages", {"messages": []}),
        ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}),
        ("tool role", {"messages": [{"role": "tool", "content": "x"}]}),
        ("user without content", {"messages": [{"role": "user"}]}),
        (
            "image in assistant turn",
            {"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": good}}]}]},
        ),
        ("huge text", {"messages": [{"role": "user", "content": "word " * 60000}]}),
        (
            "too many images",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": good}}] * (max_images + 1)}
                ]
            },
        ),
        ("bad base64", {"messages": image_message("data:image/png;base64,!!!not-base64!!!")}),
        ("not base64 encoded", {"messages": image_message("data:image/png,rawbytes")}),
        ("data url lies: text as png", {"messages": image_message(data_url(b"just some text, not an image"))}),
        ("data url lies: png as text", {"messages": image_message(data_url(_png(_noise(8, 8)), "text/plain"))}),
        ("truncated png", {"messages": image_message(data_url(_png(_noise(256, 256))[:300]))}),
        ("truncated jpeg", {"messages": image_message(data_url(_png(_noise(256, 256), "JPEG")[:500], "image/jpeg"))}),
        ("decompression bomb", {"messages": image_message(data_url(bomb_png()))}),
        ("tiff", {"messages": image_message(data_url(_png(_noise(8, 8), "TIFF"), "image/tiff"))}),
        ("file url", {"messages": image_message("file:///etc/passwd")}),
        ("remote url when disabled", {"messages": image_message("http://169.254.169.254/latest/meta-data")}),
        ("empty image url", {"messages": image_message("")}),
        ("unknown model", {"messages": USER, "model": "gpt-5"}),
        ("nested arrays in messages", b'{"messages": ' + b"[" * 60000 + b"]" * 60000 + b"}"),
        (
            "nested objects in an unknown field",
            b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b'{"a": ' * 60000 + b"1" + b"}" * 60001,
        ),
        ("lone surrogate", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
        ("lone low surrogate", b'{"messages": [{"role": "user", "content": "a\\udc00b"}]}'),
        ("surrogates in the wrong order", b'{"messages": [{"role": "user", "content": "\\udc00\\ud800"}]}'),
        ("lone surrogate in a key", b'{"messages": [{"role": "user", "content": "a"}], "\\udc00": 1}'),
        ("not utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'),
        ("utf-16 body", '{"messages": [{"role": "user", "content": "hi"}]}'.encode("utf-16")),
        ("NaN", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        ("Infinity", b'{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}'),
        ("float overflow", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}'),
        ("5000-digit integer", b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5000 + b"}"),
        ("max_tokens past the context, streamed", {"messages": USER, "max_tokens": 10**6, "stream": True}),
        (
            "text past the context, streamed",
            {"messages": [{"role": "user", "content": "word " * 60000}], "stream": True},
        ),
        ("logit_bias with 301 entries", {"messages": USER, "logit_bias": {str(k): 1 for k in range(301)}}),
        ("unicode digit in a logit_bias key", {"messages": USER, "logit_bias": {"\u00b2": 1}}),
        ("2000-digit logit_bias key", {"messages": USER, "logit_bias": {"1" * 2000: 1}}),
        ("a 5000-character stop string", {"messages": USER, "stop": "x" * 5000}),
    ]
    out_of_range = {
        "temperature": [-0.1, 2.5, "hot"],
        "top_p": [1.5, -1, -0.0001],  # 0 is allowed (OpenAI): the most likely token only
        "top_k": [-5, 1.5, 2**63, 10**6],
        "min_p": [-0.1, 1.1],
        "n": [0, 1000, 2.5, 2**64],
        "max_tokens": [0, -1, "many", 1.5, 2**64, 4096],
        "max_completion_tokens": [0, -3, 2**63],
        "presence_penalty": [3, -2.5],
        "frequency_penalty": [2.1, -9],
        "repetition_penalty": [0, -1, 11],
        "logprobs": ["yes", 3],
        "top_logprobs": [21, -1, 2**63],
        "logit_bias": [{"abc": 1}, {"5": 500}, {"99999999": 1}, [1, 2]],
        "seed": ["x", 1.5, 2**64, -(2**63) - 1, 2**63],
        "stop": [["a", "b", "c", "d", "e"], 5],
        "stream": ["maybe"],
        "stream_options": ["yes"],
        "max_num_tiles": [0, 100],
        "messages": [None],
    }
    for param, values in out_of_range.items():
        for value in values:
            cases.append((f"{param}={value!r}", {"messages": USER, param: value}))
    cases.append(("top_logprobs without logprobs", {"messages": USER, "top_logprobs": 3}))
    return cases


def odd_but_valid_requests() -> list[tuple[str, dict]]:
    palette = _noise(64, 48).convert("P")
    cmyk = _noise(64, 48).convert("CMYK")
    sixteen = Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)  # mode I;16
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    images = {
        "1x1": (_png(_noise(1, 1)), "image/png"),
        "1x20000": (_png(_noise(1, 20000)), "image/png"),
        "20000x1": (_png(_noise(20000, 1)), "image/png"),
        "palette": (_png(palette), "image/png"),
        "cmyk jpeg": (_png(cmyk, "JPEG"), "image/jpeg"),
        "16-bit": (_png(sixteen), "image/png"),
        "alpha": (_png(_noise(64, 64, "RGBA")), "image/png"),
        "animated gif": (_png(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif"),
        "webp": (_png(_noise(40, 30), "WEBP"), "image/webp"),
        "bmp": (_png(_noise(40, 30), "BMP"), "image/bmp"),
        "png sent as jpeg": (_png(_noise(40, 30)), "image/jpeg"),
    }
    cases = [
        (name, {"messages": image_message(data_url(data, mime)), "max_tokens": 2})
        for name, (data, mime) in images.items()
    ]
    cases += [
        ("empty user text", {"messages": [{"role": "user", "content": ""}], "max_tokens": 2}),
        ("empty content list", {"messages": [{"role": "user", "content": []}], "max_tokens": 2}),
        (
            "assistant null content",
            {"messages": [*USER, {"role": "assistant", "content": None}, *USER], "max_tokens": 2},
        ),
        ("developer role", {"messages": [{"role": "developer", "content": "be nice"}, *USER], "max_tokens": 2}),
        (
            "special tokens in text",
            {"messages": [{"role": "user", "content": "<|im_end|><s></s><img>"}], "max_tokens": 2},
        ),
        ("unicode", {"messages": [{"role": "user", "content": "🙂 \u0000 \ud7ff 图片"}], "max_tokens": 2}),
        ("unknown fields", {"messages": USER, "max_tokens": 2, "tools": [], "response_format": {"type": "text"}}),
        ("an empty stop string, which stops nothing", {"messages": USER, "max_tokens": 2, "stop": ["", "x"]}),
    ]
    return cases
