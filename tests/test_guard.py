"""The request middleware alone, around a streaming ASGI app: ids, access log, key and size checks."""

import asyncio
import logging

import httpx

from monovl.server.guard import Guard
from monovl.server.state import ServerSettings

SETTINGS = ServerSettings(served_model_name="m", model_path="/m", api_key="k", max_body_bytes=100)


async def streaming_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for chunk in (b"data: 1\n\n", b"data: 2\n\n"):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def request(method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=Guard(streaming_app, SETTINGS))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_a_streamed_response_passes_whole_with_its_request_id_and_one_access_log_line(caplog):
    caplog.set_level(logging.INFO, logger="monovl.access")
    response = request("GET", "/health", headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 200
    assert response.text == "data: 1\n\ndata: 2\n\n"
    assert response.headers["x-request-id"] == "abc-123"
    [record] = [r for r in caplog.records if r.name == "monovl.access"]
    assert '"GET /health" 200' in record.getMessage()
    assert "request_id=abc-123" in record.getMessage()


def test_without_an_id_the_server_makes_one():
    assert len(request("GET", "/health").headers["x-request-id"]) == 32


def test_a_v1_request_without_the_key_is_401_before_the_app_runs(caplog):
    caplog.set_level(logging.INFO, logger="monovl.access")
    response = request("POST", "/v1/chat/completions", content=b"{}")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "x-request-id" in response.headers
    assert '"POST /v1/chat/completions" 401' in caplog.records[-1].getMessage()
    ok = request("POST", "/v1/chat/completions", content=b"{}", headers={"Authorization": "Bearer k"})
    assert ok.status_code == 200


def test_with_a_key_only_health_metrics_and_version_answer_without_it():
    for path in ("/tokenize", "/detokenize", "/openapi.json", "/docs", "/v1/models", "/no-such-path", "/health/"):
        for method in ("GET", "POST"):
            assert request(method, path).status_code == 401, (method, path)
    for path in ("/health", "/metrics", "/version"):
        assert request("GET", path).status_code == 200, path
    assert request("POST", "/tokenize", headers={"Authorization": "Bearer k"}).status_code == 200


def test_a_body_over_the_limit_is_413():
    response = request("POST", "/v1/chat/completions", content=b"x" * 101, headers={"Authorization": "Bearer k"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
