"""The OpenAPI document. Routes with a body parse it themselves (server/request_body.py), so their
request and response schemas are declared here, with every definition they refer to under
components, and every error status a route answers with is described."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from monovl.server.protocol import ErrorResponse

REF = "#/components/schemas/{model}"
# Before OpenAPI 3.2 a `text/event-stream` schema describes one event, as a client parses it (each
# `data` field is a chunk's JSON, or `[DONE]` at the end).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}

ERRORS = {
    400: "a malformed body or a parameter out of range (`param` names it)",
    401: "a missing or wrong API key",
    404: "an unknown model",
    408: "a request body that stopped arriving",
    413: "a body or an image over the limits",
    500: "the request failed inside the engine (the server goes on)",
    503: "the server is at capacity, shutting down, or its engine stopped (`code` says which)",
}
# What any route may answer, whatever it does: the API key and the connection guard (server/guard.py).
EVERY_ROUTE = (401, 408, 413, 503)

_BODIES: dict[str, type[BaseModel]] = {}  # by name: the schemas' own names under components


def error_responses(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in (*statuses, *EVERY_ROUTE)}


def body_docs(request: type[BaseModel], response: type[BaseModel], streams: bool = False) -> dict:
    """`openapi_extra` and `responses` for a POST route whose body is `request`."""
    _BODIES[request.__name__] = request
    success: dict = {"description": "the answer", "model": response}
    if streams:
        success["description"] = f"the answer; with `stream: true`, server-sent events of {response.__name__} chunks"
        success["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    body = {"$ref": REF.format(model=request.__name__)}
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
    statuses = (400, 404, 500) if streams else (400, 404)
    return {"openapi_extra": extra, "responses": {200: success} | error_responses(*statuses)}


def install(app: FastAPI) -> None:
    def document() -> dict:
        if app.openapi_schema is None:
            openapi = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODIES.values():
                body = model.model_json_schema(ref_template=REF)
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            app.openapi_schema = openapi
        return app.openapi_schema

    app.openapi = document
