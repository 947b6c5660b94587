"""What the server tests send that a client library would not: raw requests, data URLs."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from benchmarks.server_process import ServerProcess

T = TypeVar("T")

# What a raw body is sent as: the server takes nothing but JSON.
JSON = {"Content-Type": "application/json"}


def raw_request(server: ServerProcess, body: dict) -> socket.socket:
    """A chat request on a socket of its own, unread: the caller reads, or leaves by closing it."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this slow connection (or answered it 408): one more byte tells."""
    try:
        sock.sendall(b"X")  # one more header byte
        data = sock.recv(4096)
    except TimeoutError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def health_pings_during(server: ServerProcess, work: Callable[[], T]) -> tuple[T, list[float]]:
    """`work()`'s result, and the seconds each `/health` asked meanwhile took: how long the server's
    event loop was held."""
    pings: list[float] = []
    done = threading.Event()

    def ping() -> None:
        while not done.is_set():
            started = time.perf_counter()
            httpx.get(f"{server.url}/health", timeout=60)
            pings.append(time.perf_counter() - started)
            time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        return work(), pings
    finally:
        done.set()
        pinger.join()
