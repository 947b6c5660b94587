"""The middleware every HTTP request passes: API key, body limits, request id and access log (one
line a request once its response is over, with its status and outcome, server/logs.py).

With `--api-key` set every path but `OPEN_PATHS` needs it (`/tokenize` runs the preprocessing, and
`/openapi.json` and unknown paths answer only those who have it).

The body limit holds however the body comes: a Content-Length over it is refused at once, and a
body without one (chunked) is counted as it arrives and refused with a 413 the moment it crosses
the limit, so no more than the limit is ever held. A body that stops arriving for `body_timeout`
seconds gets a 408. Both close the connection, since the rest of the body would still be on it.

Plain ASGI, not Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`): that one relays each
chunk of a streaming response through a memory stream between two tasks, a cost paid on every
server-sent token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monovl.server.errors import APIError
from monovl.server.logs import begin_request, request_failed
from monovl.server.state import ServerSettings

log = logging.getLogger("monovl.access")
# What a load balancer, an orchestrator and a scraper call without the key; every other path needs it.
OPEN_PATHS = frozenset({"/health", "/metrics", "/version"})


class Guard:
    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        record = begin_request(request_id)
        started = time.perf_counter()
        status = 500  # what the server's error handler answers if nothing below starts a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        try:
            rejection = self._rejection(scope, headers)
            if rejection is not None:
                request_failed(rejection.code, rejection.message)
                await rejection.response()(scope, receive, send_with_id)
            else:
                await self.app(scope, self._bounded(receive), send_with_id)
        finally:
            client = scope.get("client")
            if status >= 400 and record.outcome == "ok":  # an answer no handler of ours made (a 404 route)
                record.outcome = "error"
            line = {
                "client": client[0] if client else "-",
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "outcome": record.outcome,
                "error": record.error,
            }
            because = f" error={record.error!r}" if record.error else ""
            log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                '%s "%s %s" %d %.1fms request_id=%s outcome=%s%s',
                line["client"],
                line["method"],
                line["path"],
                status,
                line["duration_ms"],
                request_id,
                record.outcome,
                because,
                extra=line,
            )

    def _rejection(self, scope: Scope, headers: Headers) -> APIError | None:
        settings = self.settings
        if settings.api_key and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                return APIError(401, "invalid or missing API key", "authentication_error", code="invalid_api_key")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return _too_large(settings.max_body_bytes)
        return None

    def _bounded(self, receive: Receive) -> Receive:
        """`receive` that raises a 413 past the body limit and a 408 when the body stalls."""
        limit, timeout = self.settings.max_body_bytes, self.settings.body_timeout
        received = 0
        body_done = False

        async def bounded() -> Message:
            nonlocal received, body_done
            if body_done:  # from here on the app only listens for the client leaving
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
                raise APIError(
                    408,
                    f"the request body stopped arriving for {timeout:g} s",
                    code="request_timeout",
                    headers=_CLOSE,
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise _too_large(limit)
            return message

        return bounded


_CLOSE = {"Connection": "close"}


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the body is larger than {limit} bytes", code="request_too_large", headers=_CLOSE)
