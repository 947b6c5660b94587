"""The FastAPI application: routes, error shapes, and the middleware (server/guard.py, CORS)."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server import chat, openapi
from server.errors import APIError
from server.guard import Guard
from server.protocol import ChatCompletionRequest, ModelCard, ModelList, completion_id
from server.request_body import parse_json_object
from server.state import ServerState
from server.streaming import ClientGone, EventStream, race, shutting_down

VERSION = "0.1.0"


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.drain.draining = True
        state.engine.shutdown()
        state.pool.shutdown()

    app = FastAPI(title="monovl", version=VERSION, lifespan=lifespan)
    app.state.monovl = state
    _add_middleware(app, state)
    _add_error_handlers(app)
    _add_routes(app, state)
    openapi.install(app)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    started = int(time.time())

    @app.get("/health")
    async def health() -> Response:
        if not state.engine.is_running:
            return APIError(503, "the engine is not running", "server_error", code="engine_dead").response()
        if state.drain.draining:  # load balancers stop sending work here
            return shutting_down().response()
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> dict:
        return {"version": VERSION}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> ModelList:
        card = ModelCard(
            id=state.settings.served_model_name,
            created=started,
            root=state.settings.model_path,
            max_model_len=state.max_model_len,
        )
        return ModelList(data=[card])

    @app.post("/v1/chat/completions", **openapi.chat_route_docs())
    async def chat_completions(request: Request) -> Response:
        body = await _parse_body(request)
        if state.drain.draining:
            raise shutting_down()
        if state.in_flight >= state.settings.max_queue:
            raise APIError(
                503,
                "the server is at capacity; retry later",
                "server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            )
        state.in_flight += 1
        try:
            # Everything is refused before the response starts, so a stream fails as a plain request does.
            prepared = await race(chat.prepare(state, body), request.receive, state.drain)
            request_id = completion_id()
            if body.stream:
                events = chat.stream(state, request_id, prepared, body)
                state.in_flight += 1  # the stream holds its own count until it ends

                def ended() -> None:
                    state.in_flight -= 1

                return EventStream(events, state.drain, chat.error_event(shutting_down()), ended)
            work = chat.complete(state, request_id, prepared, body.logprobs)
            answer = await race(work, request.receive, state.drain)
            return JSONResponse(answer.model_dump())
        finally:
            state.in_flight -= 1


async def _parse_body(request: Request) -> ChatCompletionRequest:
    data = parse_json_object(await request.body())
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e.errors()) from None


def _validation_error(errors: list) -> APIError:
    first = errors[0]
    loc = [str(p) for p in _wire_path(first.get("loc", ()))]
    if first.get("type") == "union_tag_invalid":  # the tag itself is wrong: name it
        loc.append(str(first["ctx"]["discriminator"]).strip("'"))
    param = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or None
    return APIError(400, f"{param or 'body'}: {first.get('msg', 'invalid value')}", param=param)


def _wire_path(loc: tuple) -> list:
    """The error's place in the body as the client wrote it: pydantic also names the union member
    it tried (a role's or content part's tag, `str` or `list[...]`), which the body does not have."""
    path = []
    for k, part in enumerate(loc):
        if part == "body" and k == 0:
            continue
        member = isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part in ("str", "dict", "list"))
        if not member or (path and path[-1] == part):
            path.append(part)
    return path


_UNION_TAGS = frozenset(["system", "developer", "user", "assistant", "tool", "text", "json_object", "json_schema"])


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        return _validation_error(list(error.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = "not_found" if error.status_code == 404 else None
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect) -> Response:
        return ClientGone().response()  # while its body was read: nobody reads this answer

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        logging.getLogger("monovl").exception("unhandled error")
        return APIError(500, "internal server error", "server_error").response()


def _add_middleware(app: FastAPI, state: ServerState) -> None:
    settings = state.settings
    app.add_middleware(Guard, settings=settings)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["X-Request-Id"],
        )
