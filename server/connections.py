"""The HTTP protocol uvicorn runs for monovl: its httptools one, with a deadline and size limits for
request headers.

uvicorn has no header timeout: a client that sends its headers a byte at a time (slowloris) holds
its connection, and a file descriptor, for as long as it likes. Here each request's headers must
be complete within `header_timeout` seconds of the connection opening, or of the previous
response on it ending; then the connection gets a 408 and is closed. Nor does httptools limit
their size: a header of tens of MB would be read whole, on the event loop. Here the request line
and headers may take `max_header_bytes` in all and `max_header_count` fields, as nginx and h11
bound them; past either the connection gets a 431 and is closed. Bodies have their own deadline
between chunks (server/guard.py). Many such clients at once from many addresses are the reverse
proxy's to hold off (per-address connection limits); see docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from monovl.server.errors import error_body

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_COUNT = 100


def header_deadline_protocol(
    header_timeout: float, max_header_bytes: int = MAX_HEADER_BYTES, max_header_count: int = MAX_HEADER_COUNT
) -> type[asyncio.Protocol]:
    """uvicorn's `http` protocol class for these limits."""
    limits = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes}
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {**limits, "max_header_count": max_header_count})


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn answers it through `send_400_response`."""


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_count: int = MAX_HEADER_COUNT
    _header_deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0  # of the request line and headers parsed so far
    _unparsed_bytes = 0  # received while no request's headers ended: a header the parser still gathers
    _too_large: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_deadline is None or self.transport.is_closing():
            return
        self._unparsed_bytes += len(data)  # the headers did not end in this chunk: all of it was header
        if self._unparsed_bytes > self.max_header_bytes:
            self._refuse(f"the request's headers are over {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and the line break
        if len(self.headers) >= self.max_header_count:
            self._stop(f"the request has more than {self.max_header_count} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large is None:
            super().send_400_response(msg)
        else:
            self._refuse(self._too_large)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._stop(f"the request's headers are over {self.max_header_bytes} bytes")

    def _stop(self, why: str) -> None:
        self._too_large = why
        raise _HeadersTooLarge(why)

    def _refuse(self, why: str) -> None:
        """431, as nginx and h11 answer headers past their limits, and the connection closed."""
        self._disarm()
        message = f"{why} (the server's --max-header-bytes and --max-header-count)"
        body = json.dumps(error_body(message, "invalid_request_error", None, "headers_too_large")).encode()
        head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        self.transport.write(head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        self.transport.close()

    def on_response_complete(self) -> None:
        waiting = bool(self.pipeline)  # a pipelined request whose headers are already in
        super().on_response_complete()
        if not waiting and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._unparsed_bytes = 0
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        self._unparsed_bytes = 0
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()
