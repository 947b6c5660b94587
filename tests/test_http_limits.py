"""Limits at the HTTP edge: header size and count (431), a chunked body past the body limit, and
one port for one server."""

import json
import socket
import subprocess
import sys
import time
from functools import partial

import httpx
import pytest

from benchmarks.server_process import ServerProcess, free_port
from tests.server_helpers import JSON, health_pings_during

USER = [{"role": "user", "content": "hi"}]
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--max-header-bytes", "16384", "--max-header-count", "50", "--body-timeout", "3")
    yield process
    process.stop()


def chat(server: ServerProcess) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, timeout=30)


def response_head(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_a_huge_header_is_refused_431_as_it_crosses_the_limit(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(HEAD + b"X-Big: ")
    sent, started = 0, time.perf_counter()
    try:
        while sent < 64 * 2**20:  # a 64 MB header, unless the server stops it first
            sock.sendall(b"a" * 65536)
            sent += 65536
            if sent % 2**20 == 0:
                assert chat(server).status_code == 200  # everyone else is served meanwhile
    except OSError:
        pass  # closed by the server after its 431
    head = response_head(sock)
    sock.close()
    assert head.startswith(b"HTTP/1.1 431"), head[:200]
    assert sent < 16 * 2**20 and time.perf_counter() - started < 10
    assert chat(server).status_code == 200


def test_complete_headers_over_the_size_or_count_are_refused_with_an_openai_error(server):
    for extra in (b"X-Big: " + b"b" * 20000 + b"\r\n", b"".join(b"X-H%d: v\r\n" % i for i in range(60))):
        body = json.dumps({"messages": USER, "max_tokens": 2}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(HEAD + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = response_head(sock)
        sock.close()
        assert head.startswith(b"HTTP/1.1 431"), head[:200]
        error = json.loads(head.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "headers_too_large" and "--max-header" in error["message"]
    # Within the limits: a 10 KB header and 40 fields are served.
    headers = {"x-token": "t" * 10000, **{f"x-h{i}": "v" for i in range(40)}}
    response = httpx.post(
        f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, headers=headers, timeout=30
    )
    assert response.status_code == 200


def test_a_chunked_body_past_the_limit_is_refused_before_it_ends(server):
    """The 413 comes as the body crosses the limit; the body never ends, so a server that read it
    whole first would answer 408 at the body timeout instead."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 2**20 + b"x" * 2**20 + b"\r\n"
    try:
        for _ in range(65):  # 65 MiB: past the 64 MiB limit, then the body stalls unfinished
            sock.sendall(chunk)
    except OSError:
        pass
    head = response_head(sock)
    sock.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_two_servers_on_one_port_one_serves_and_the_other_exits_2(tiny_dir):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "monovl.server.cli",
        "serve",
        str(tiny_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    servers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while all(s.poll() is None for s in servers) and time.monotonic() < deadline:
            time.sleep(0.1)
        exited = [s for s in servers if s.poll() is not None]
        assert len(exited) == 1 and exited[0].returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in exited[0].stdout.read()
        running = next(s for s in servers if s.poll() is None)
        while time.monotonic() < deadline:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert running.poll() is None
    finally:
        for s in servers:
            s.kill()
            s.wait()


def test_a_body_of_millions_of_small_values_is_refused_before_parsing(server):
    """60 MB of token ids or tiny messages would hold the event loop while parsed
    (`python -m benchmarks.body_parse`)."""
    ids = b'{"prompt": [' + b"1," * (30 * 2**20) + b"1]}"
    message = b'{"role": "user", "content": "a"}'
    messages = b'{"messages": [' + b",".join([message] * (1800 * 1024)) + b"]}"
    for path, body in (("/v1/completions", ids), ("/v1/chat/completions", messages)):
        send = partial(httpx.post, f"{server.url}{path}", content=body, headers=JSON, timeout=60)
        response, pings = health_pings_during(server, send)
        assert response.status_code == 413 and "--max-body-values" in response.json()["error"]["message"]
        assert max(pings) < 0.5, max(pings)
    prompt = [5] * 100_000  # under the value limit: parsed, then refused by the context
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
