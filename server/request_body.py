"""A request body from raw bytes to a JSON object: strict UTF-8 and strict JSON, or a 400.

Python's `json` takes NaN and Infinity (not JSON), lone UTF-16 surrogate escapes (which no
tokenizer or UTF-8 encoder takes later) and integers of thousands of digits (a ValueError of its
own), and its parser raises RecursionError on deep nesting. Each of these is refused here,
naming where it is, before any other work.

Parsing and validating a body runs on the event loop and holds the GIL throughout (a thread would
not free the loop): its cost grows with the number of values, not bytes, and a body under the byte
limit can hold millions of small numbers or tiny messages (`python -m benchmarks.body_parse` times
them). So a body may hold at most
`max_values` values, counted by its commas before parsing (a string's commas count too: a
bound from above, in one pass at memory speed).
"""

from __future__ import annotations

import json
import re

from monovl.server.errors import APIError, bad_request

# A \uD800-\uDFFF escape: half of a surrogate pair, or a lone one (checked only when present).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotJSON(ValueError):
    pass


DEFAULT_MAX_VALUES = 131_072


def check_content_type(content_type: str | None) -> None:
    """A body sent as anything but JSON is a 415: a web page may post text/plain, a form or a body
    with no type at all (a Blob without one) to any address without asking first (no CORS
    preflight), and must not make this server generate."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        sent = f"not {media}" if media else "with no Content-Type"
        raise APIError(
            415,
            f"the body must be sent as Content-Type: application/json, {sent}",
            code="unsupported_media_type",
        )


def parse_json_object(raw: bytes, max_values: int = DEFAULT_MAX_VALUES) -> dict:
    if raw.count(b",") >= max_values:
        raise APIError(
            413,
            f"the body holds more than {max_values} JSON values (the server's --max-body-values)",
            code="request_too_large",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the body is not valid UTF-8 (at byte {e.start})", code="invalid_json") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise bad_request(
            f"the body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})", code="invalid_json"
        ) from None
    except RecursionError:
        raise bad_request("the body is nested too deeply to be a request", code="invalid_json") from None
    except ValueError as e:  # _NotJSON, or an integer past Python's digit limit
        raise bad_request(f"the body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(data)
    return data


def _refuse_constant(name: str) -> float:
    raise _NotJSON(f"{name} is not a JSON number")


def _refuse_lone_surrogates(data: dict) -> None:
    """A 400 naming the first string (or key) that holds half of a surrogate pair alone."""
    pending: list[tuple[object, str]] = [(data, "")]
    while pending:
        value, path = pending.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                raise _lone_surrogate(path or "body")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    raise _lone_surrogate(f"{path}.{_printable(key)}".lstrip("."))
                pending.append((item, f"{path}.{key}".lstrip(".")))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{k}]") for k, item in enumerate(value))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def _lone_surrogate(path: str) -> APIError:
    return bad_request(
        f"{path}: a string holds a lone UTF-16 surrogate (half of a \\ud800-\\udfff pair); send valid Unicode",
        path,
        "invalid_unicode",
    )
