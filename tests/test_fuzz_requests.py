"""Property-based fuzzing of /v1/chat/completions: whatever the body, never a 5xx, always OpenAI's shape."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.server_process import ServerProcess
from tests.hostile import data_url, image_message

TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
    "a7d6a4a70000000049454e44ae426082"
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
jsonish = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "developer", "tool", "", "USER"])
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {"url": st.sampled_from([data_url(TINY_PNG), "data:image/png;base64,xx", "http://10.0.0.1/a.png", ""])}
            ),
        }
    ),
    jsonish,
)
message = st.fixed_dictionaries(
    {"role": roles}, optional={"content": st.one_of(st.text(max_size=60), st.lists(parts, max_size=3), jsonish)}
)
params = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=4)},
    optional={
        "temperature": st.one_of(st.floats(-1, 3), jsonish),
        "top_p": st.floats(-0.5, 1.5),
        "top_k": st.integers(-3, 2000),
        "min_p": st.floats(-0.5, 1.5),
        "n": st.integers(-1, 5),
        "max_tokens": st.one_of(st.integers(-2, 8), jsonish),
        "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=5)),
        "seed": st.one_of(st.integers(-(2**70), 2**70), jsonish),
        "logprobs": st.one_of(st.booleans(), jsonish),
        "top_logprobs": st.integers(-2, 25),
        "presence_penalty": st.floats(-3, 3),
        "frequency_penalty": st.floats(-3, 3),
        "repetition_penalty": st.floats(-1, 12),
        "logit_bias": st.dictionaries(st.text(max_size=6), st.floats(-200, 200), max_size=3),
        "stream": st.booleans(),
        "max_num_tiles": st.integers(-1, 50),
        "model": st.sampled_from(["fuzz", "other", None]),
    },
)


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(
        tiny_dir, "--served-model-name", "fuzz", "--max-model-len", "2048", "--max-image-tiles", "6"
    )
    yield process
    process.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(params, jsonish))
def test_no_body_gets_a_5xx(server, body):
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
        body["max_tokens"] = 8
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    elif body.get("stream") is True:
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert response.json()["object"] == "chat.completion"


def test_still_healthy_with_no_kv_in_use(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.metric("monovl:kv_cache_usage_perc") == 0


def test_a_known_good_request_still_works(server):
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json={"messages": image_message(data_url(TINY_PNG)), "max_tokens": 2}
    )
    assert response.status_code == 200
