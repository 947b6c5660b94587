"""The middleware every HTTP request passes: API key, body size limit, request id and access log.

Plain ASGI, not Starlette's `BaseHTTPMiddleware` (`@app.middleware("http")`): that one relays each
chunk of a streaming response through a memory stream between two tasks, a cost paid on every
server-sent token.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError
from server.state import ServerSettings

log = logging.getLogger("monovl.access")


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
                await rejection.response()(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            log.info(
                '%s "%s %s" %d %.1fms request_id=%s',
                client[0] if client else "-",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )

    def _rejection(self, scope: Scope, headers: Headers) -> APIError | None:
        settings = self.settings
        if scope["path"].startswith("/v1") and settings.api_key and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                return APIError(401, "invalid or missing API key", "authentication_error", code="invalid_api_key")
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return APIError(413, f"the body is larger than {settings.max_body_bytes} bytes", code="request_too_large")
        return None
