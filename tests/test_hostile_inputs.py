"""Hostile input through a real server: every bad request a quick 4xx in OpenAI's shape, odd valid
ones served, nothing from the server's filesystem or environment in any error, the server healthy."""

import time

import httpx
import pytest

from benchmarks.server_process import ServerProcess
from tests.hostile import hostile_requests, odd_but_valid_requests

KEY = "hostile-test-key-3141"


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--api-key", KEY, "--max-model-len", "4096", "--max-images-per-request", "8")
    yield process
    process.stop()


def send(server, body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{server.url}/v1/chat/completions"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers=headers, timeout=30)
    return httpx.post(url, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(("name", "body"), hostile_requests(), ids=[name for name, _ in hostile_requests()])
def test_hostile_request_gets_a_quick_4xx(server, tiny_dir, name, body):
    started = time.perf_counter()
    response = send(server, body)
    assert time.perf_counter() - started < 2
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert str(tiny_dir) not in response.text and KEY not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize(("name", "body"), odd_but_valid_requests(), ids=[name for name, _ in odd_but_valid_requests()])
def test_odd_but_valid_request_is_served(server, name, body):
    response = send(server, body)
    assert response.status_code == 200, (name, response.text[:300])
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_every_route_but_health_metrics_and_version_needs_the_key_and_the_server_is_healthy_after(server):
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.post(f"{server.url}/tokenize", json={"prompt": "hi"}).status_code == 401
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": [1]}).status_code == 401
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert server.metric("monovl:kv_cache_usage_perc") == 0
