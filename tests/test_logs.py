"""The server's log lines: with `--log-format json` every line is one JSON object with time and
level, lines made while serving carry the request's id, and each access line says how the
request went (refusals with their reason, streams cut by a client that left)."""

import json
import socket
import time

import httpx
import pytest

from benchmarks.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--log-format", "json")
    yield process
    process.stop()


def lines(server: ServerProcess) -> list[dict]:
    """Every line logged so far, each parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in server.output().splitlines() if line.strip()]


def access_line(server: ServerProcess, request_id: str) -> dict:
    deadline = time.time() + 10
    while time.time() < deadline:
        found = [x for x in lines(server) if x.get("request_id") == request_id and x["logger"] == "monovl.access"]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no access line for {request_id}")


def test_every_line_is_json_with_time_and_level_uvicorns_too(server):
    logged = lines(server)
    assert any(x["logger"].startswith("uvicorn") for x in logged)  # "Uvicorn running on ..."
    for line in logged:
        assert line["time"].endswith("Z") and line["level"] in ("debug", "info", "warning", "error", "critical")


def test_a_refusal_is_logged_with_its_reason_and_request_id(server):
    headers = {"X-Request-Id": "refused-1"}
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 7}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 400
    line = access_line(server, "refused-1")
    assert (line["status"], line["outcome"], line["path"]) == (400, "error", "/v1/chat/completions")
    assert "temperature" in line["error"]


def test_ignored_fields_are_named_in_a_line_with_the_request_id(server):
    headers = {"X-Request-Id": "extra-1"}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "frobnicate": 1}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    assert access_line(server, "extra-1")["outcome"] == "ok"
    (warning,) = [x for x in lines(server) if x["request_id"] == "extra-1" and x["level"] == "warning"]
    assert "frobnicate" in warning["message"]


def test_a_stream_whose_client_left_is_logged_so_not_as_ok(server):
    body = json.dumps(
        {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4000, "ignore_eos": True, "stream": True}
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: left-1\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert b"200 OK" in sock.recv(4096)  # the stream has begun
    line = access_line(server, "left-1")
    assert (line["status"], line["outcome"]) == (200, "client_left")


def test_the_text_format_gives_each_line_a_timestamp_and_the_request_id(tiny_dir):
    server = ServerProcess(tiny_dir)
    try:
        headers = {"X-Request-Id": "text-1"}
        httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []}, headers=headers)
        time.sleep(0.5)
    finally:
        log = server.stop()
    uvicorn = [line for line in log.splitlines() if "uvicorn" in line]
    assert uvicorn and all(line[:4].isdigit() for line in uvicorn)  # each begins with its date and time
    (access,) = [line for line in log.splitlines() if "request_id=text-1" in line]
    assert " 400 " in access and "outcome=error" in access and "messages" in access
