"""The FastAPI application: routes, error shapes, and the middleware (server/guard.py, CORS)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from monovl.server import chat, openapi, responses, tokenization
from monovl.server import completions as text_completions
from monovl.server.completions import Completion, CompletionRequest
from monovl.server.completions import completion_id as cmpl_id
from monovl.server.errors import APIError, bad_request
from monovl.server.guard import Guard
from monovl.server.logs import request_cut, request_failed
from monovl.server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    completion_id,
)
from monovl.server.request_body import check_content_type, parse_json_object
from monovl.server.responses_protocol import ResponseDeleted, ResponseObject, ResponsesRequest, response_id
from monovl.server.state import ServerState
from monovl.server.stats_log import log_stats_every
from monovl.server.streaming import ClientGone, Events, EventStream, race, shutting_down
from monovl.server.tokenization import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from monovl.server.validation_errors import validation_error
from monovl.server.version import version

VERSION = version()
T = TypeVar("T", bound=BaseModel)
P = TypeVar("P")


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        interval = state.settings.stats_every
        stats = asyncio.create_task(log_stats_every(interval, state.metrics)) if interval > 0 else None
        yield
        if stats is not None:
            stats.cancel()
        state.drain.refusing.set()  # the server has stopped: nothing more is taken
        state.engine.shutdown()
        state.pool.shutdown()
        state.image_pool.shutdown()
        if state.fetch_pool is not None:
            state.fetch_pool.shutdown()

    app = FastAPI(title="monovl", version=VERSION, lifespan=lifespan)
    app.state.monovl = state
    _add_middleware(app, state)
    _add_error_handlers(app)
    _add_routes(app, state)
    openapi.install(app)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    started = int(time.time())

    @app.get("/health", responses=openapi.error_responses())
    async def health() -> Response:
        if not state.engine.is_running:
            return APIError(503, "the engine is not running", "server_error", code="engine_dead").response()
        if state.drain.unready:  # load balancers stop sending work here
            return shutting_down().response()
        return JSONResponse({"status": "ok"})

    @app.get("/version", responses=openapi.error_responses())
    async def version() -> dict:
        return {"version": VERSION}

    @app.get("/metrics", response_class=PlainTextResponse, responses=openapi.error_responses())
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    def card() -> ModelCard:
        return ModelCard(
            id=state.settings.served_model_name,
            created=started,
            root=state.settings.model_path,
            max_model_len=state.max_model_len,
        )

    @app.get("/v1/models", responses=openapi.error_responses())
    async def models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}", responses=openapi.error_responses(404))
    async def model(model_id: str) -> ModelCard:
        if model_id != state.settings.served_model_name:
            raise APIError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")
        return card()

    @app.post("/v1/chat/completions", **openapi.body_docs(ChatCompletionRequest, ChatCompletion, streams=True))
    async def chat_completions(request: Request) -> Response:
        body = await _parse_body(request, ChatCompletionRequest, state)

        def answer(prepared: chat.Prepared, request_id: str) -> AsyncIterator[str] | Awaitable[BaseModel]:
            if body.stream:
                return chat.stream(state, request_id, prepared, body)
            return chat.complete(state, request_id, prepared, body.logprobs)

        return await _generate(state, request, chat.prepare(state, body), answer, completion_id(), body.n)

    @app.post("/v1/completions", **openapi.body_docs(CompletionRequest, Completion, streams=True))
    async def completions(request: Request) -> Response:
        body = await _parse_body(request, CompletionRequest, state)

        def answer(
            prepared: text_completions.PreparedCompletion, request_id: str
        ) -> AsyncIterator[str] | Awaitable[BaseModel | Response]:
            if body.stream:
                return text_completions.stream(state, request_id, prepared, body)
            return text_completions.complete(state, request_id, prepared, body.echo)

        preparing = text_completions.prepare(state, body)
        return await _generate(state, request, preparing, answer, cmpl_id(), body.num_prompts * body.n)

    @app.post("/v1/responses", **openapi.body_docs(ResponsesRequest, ResponseObject, streams=True))
    async def create_response(request: Request) -> Response:
        body = await _parse_body(request, ResponsesRequest, state)

        def answer(prepared: responses.PreparedResponse, response_id: str) -> AsyncIterator[str] | Awaitable[BaseModel]:
            if body.stream:
                return responses.stream(state, response_id, prepared)
            return responses.complete(state, response_id, prepared)

        return await _generate(state, request, responses.prepare(state, body), answer, response_id(), 1)

    @app.get("/v1/responses/{response_id}", responses=openapi.error_responses(404))
    async def get_response(response_id: str) -> ResponseObject:
        stored = state.responses.get(response_id)
        if stored is None:
            raise responses.response_not_found(response_id)
        return JSONResponse(stored.response)

    @app.delete("/v1/responses/{response_id}", responses=openapi.error_responses(404))
    async def delete_response(response_id: str) -> ResponseDeleted:
        if not state.responses.delete(response_id):
            raise responses.response_not_found(response_id)
        return ResponseDeleted(id=response_id)

    @app.post("/tokenize", **openapi.body_docs(TokenizeRequest, TokenizeResponse))
    async def tokenize(request: Request) -> Response:
        body = await _parse_body(request, TokenizeRequest, state)
        admit(state)
        with _counted(state):
            answer = await race(tokenization.tokenize(state, body), request.receive, state.drain)
        return JSONResponse(answer.model_dump())

    @app.post("/detokenize", **openapi.body_docs(DetokenizeRequest, DetokenizeResponse))
    async def detokenize(request: Request) -> Response:
        body = await _parse_body(request, DetokenizeRequest, state)
        admit(state)
        with _counted(state):
            answer = await race(tokenization.detokenize(state, body), request.receive, state.drain)
        return JSONResponse(answer.model_dump())


async def _generate(
    state: ServerState,
    request: Request,
    preparing: Coroutine[None, None, P],
    answer: Callable[[P, str], AsyncIterator[str] | Events | Awaitable[BaseModel | Response]],
    request_id: str,
    sequences: int,
) -> Response:
    """Admit a generation request of `sequences` completions, prepare it (racing the client), then
    answer it whole or as a stream. It counts as its sequences against `--max-queue`."""
    try:
        admit(state, sequences)
    except APIError:
        preparing.close()
        raise
    with _counted(state, sequences):
        # Everything is refused before the response starts, so a stream fails as a plain request does.
        prepared = await race(preparing, request.receive, state.drain)
        result = answer(prepared, request_id)
        if isinstance(result, AsyncIterator | Events):  # a stream holds its own count until it ends
            state.in_flight += sequences

            def ended() -> None:
                state.in_flight -= sequences

            return EventStream(result if isinstance(result, Events) else Events(result), state.drain, ended)
        body = await race(result, request.receive, state.drain)
        return body if isinstance(body, Response) else JSONResponse(body.model_dump())


def admit(state: ServerState, sequences: int = 1) -> None:
    """Refuse new work while draining, a request of more than `--max-request-sequences` completions,
    and work past `--max-queue` sequences in flight (an idle server takes any one request)."""
    if state.drain.draining:
        raise shutting_down()
    limit = state.settings.max_request_sequences
    if sequences > limit:
        raise bad_request(
            f"the request asks for {sequences} completions (prompts x n); at most {limit} "
            "(the server's --max-request-sequences)",
            "n",
            "too_many_sequences",
        )
    if state.in_flight and state.in_flight + sequences > state.settings.max_queue:
        raise APIError(
            503,
            "the server is at capacity; retry later",
            "server_error",
            code="overloaded",
            headers={"Retry-After": "1"},
        )


@contextmanager
def _counted(state: ServerState, sequences: int = 1) -> Iterator[None]:
    """`sequences` in flight against `--max-queue` while the block runs."""
    state.in_flight += sequences
    try:
        yield
    finally:
        state.in_flight -= sequences


async def _parse_body(request: Request, model: type[T], state: ServerState) -> T:
    check_content_type(request.headers.get("content-type"))
    data = parse_json_object(await request.body(), state.settings.max_body_values)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        if isinstance(error, ClientGone):
            request_cut("client_left")
        else:
            request_failed(error.code, error.message)
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        refusal = validation_error(list(error.errors()))
        request_failed(refusal.code, refusal.message)
        return refusal.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = "not_found" if error.status_code == 404 else None
        request_failed(code, str(error.detail))
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, error: ClientDisconnect) -> Response:
        request_cut("client_left")
        return ClientGone().response()  # while its body was read: nobody reads this answer

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        logging.getLogger("monovl").exception("unhandled error")
        request_failed("internal_error", f"{type(error).__name__}: {error}")
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
