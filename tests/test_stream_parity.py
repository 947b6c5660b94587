"""A streamed request fails before its first byte exactly when the same request unstreamed fails."""

import base64

import httpx
import pytest

from tests.conftest import png_bytes

USER = [{"role": "user", "content": "Hello there"}]
LONG = "word " * 70_000  # past the tiny model's context, whatever it tokenizes to
BROKEN_PNG = "data:image/png;base64," + base64.b64encode(png_bytes(40, 30)[:60]).decode()

CHATS = {
    "prompt over the context": {"messages": [{"role": "user", "content": LONG}]},
    "max_tokens over the context": {"messages": USER, "max_tokens": 10**9},
    "temperature out of range": {"messages": USER, "temperature": -1},
    "top_p out of range": {"messages": USER, "top_p": 1.5},
    "n of zero": {"messages": USER, "n": 0},
    "seed past int64": {"messages": USER, "seed": 2**64},
    "unknown model": {"model": "nobody", "messages": USER},
    "a schema that does not compile": {
        "messages": USER,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    },
    "a truncated image": {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BROKEN_PNG}}]}]
    },
    "bad base64": {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}
        ]
    },
    "too many images": {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 50,
            }
        ]
    },
    "a logit bias past the vocabulary": {"messages": USER, "logit_bias": {"99999999": 5}},
}
COMPLETIONS = {
    "prompt over the context": {"prompt": LONG},
    "token ids past the vocabulary": {"prompt": [5, 99999999]},
    "max_tokens over the context": {"prompt": "Hello", "max_tokens": 10**9},
    "best_of below n": {"prompt": "Hello", "n": 3, "best_of": 2},
}


def both(url: str, body: dict) -> tuple[httpx.Response, httpx.Response]:
    plain = httpx.post(url, json={"model": "mono", **body, "stream": False}, timeout=60)
    streamed = httpx.post(url, json={"model": "mono", **body, "stream": True}, timeout=60)
    return plain, streamed


def assert_alike(plain: httpx.Response, streamed: httpx.Response) -> None:
    assert 400 <= plain.status_code < 500, plain.text
    assert streamed.status_code == plain.status_code
    assert streamed.headers["content-type"].startswith("application/json")  # no event stream was started
    assert streamed.json()["error"] == plain.json()["error"]


@pytest.mark.parametrize("case", sorted(CHATS))
def test_chat_fails_alike_streamed_or_not(mono_server, case):
    assert_alike(*both(f"{mono_server.url}/v1/chat/completions", CHATS[case]))


@pytest.mark.parametrize("case", sorted(COMPLETIONS))
def test_completion_fails_alike_streamed_or_not(mono_server, case):
    assert_alike(*both(f"{mono_server.url}/v1/completions", COMPLETIONS[case]))
