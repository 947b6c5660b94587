"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with the right status."""

from __future__ import annotations

import json

from fastapi.responses import Response

from monovl.server.logs import request_failed


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> Response:
        # ASCII escapes: a message that quotes the request (a model name, a path) renders whatever it holds.
        body = json.dumps(error_body(self.message, self.type, self.param, self.code))
        return Response(body, status_code=self.status, headers=self.headers, media_type="application/json")


def error_body(message: str, type: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_event(error: APIError) -> str:
    """`error` as a stream's last event (its status was sent before the failure); the request's
    access line names it."""
    request_failed(error.code, error.message)
    return f"data: {json.dumps(error_body(error.message, error.type, error.param, error.code))}\n\n"
