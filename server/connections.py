"""The HTTP protocol uvicorn runs for monovl: its httptools one, with a deadline for request headers.

uvicorn has no header timeout: a client that sends its headers a byte at a time (slowloris) holds
its connection, and a file descriptor, for as long as it likes. Here each request's headers must
be complete within `header_timeout` seconds of the connection opening, or of the previous
response on it ending; then the connection gets a 408 and is closed. Bodies have their own
deadline between chunks (server/guard.py). Many such clients at once from many addresses are
the reverse proxy's to hold off (per-address connection limits); see docs/reliability.md.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def header_deadline_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's `http` protocol class for this timeout."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

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
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()
