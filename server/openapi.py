"""The OpenAPI document: the chat route parses its own body (server/request_body.py), so its request
and response schemas are declared here, with every definition they refer to under components."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse

REF = "#/components/schemas/{model}"

ERRORS = {
    400: "a malformed body or a parameter out of range (`param` names it)",
    401: "a missing or wrong API key",
    404: "an unknown model",
    408: "a request body that stopped arriving",
    413: "a body or an image over the limits",
    503: "the server is at capacity, shutting down, or its engine stopped (`code` says which)",
}


def chat_route_docs() -> dict:
    """`openapi_extra` and `responses` for POST /v1/chat/completions."""
    request = {"$ref": REF.format(model="ChatCompletionRequest")}
    success = {
        "description": "the completion; with `stream: true` server-sent events of chat.completion.chunk, then [DONE]",
        "model": ChatCompletion,
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    responses = {200: success} | {
        status: {"model": ErrorResponse, "description": why} for status, why in ERRORS.items()
    }
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": request}}}}
    return {"openapi_extra": extra, "responses": responses}


def install(app: FastAPI) -> None:
    def document() -> dict:
        if app.openapi_schema is None:
            openapi = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
            body = ChatCompletionRequest.model_json_schema(ref_template=REF)
            schemas.update(body.pop("$defs", {}))
            schemas["ChatCompletionRequest"] = body
            app.openapi_schema = openapi
        return app.openapi_schema

    app.openapi = document
