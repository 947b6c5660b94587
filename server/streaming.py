"""Work that stops the moment its client leaves or the server drains, and the SSE response built on it.

A request's work (preprocessing, waiting in the engine's queue, generating) races the client's
`http.disconnect` and the drain deadline (server/drain.py). A client that leaves is noticed at
once, wherever its request is, not at the next write; cancelling the work closes the engine
stream, which aborts the request and frees its KV blocks before the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from monovl.server.drain import Drain
from monovl.server.errors import APIError, error_event
from monovl.server.logs import request_cut

T = TypeVar("T")


class ClientGone(APIError):
    def __init__(self) -> None:
        super().__init__(499, "the client closed the connection", code="client_disconnected")


def shutting_down() -> APIError:
    """Work refused or ended by the drain, answered with nothing of it, so a proxy may send it elsewhere;
    the connection closes, so that a proxy's next request on it goes to another replica too."""
    return APIError(
        503,
        "the server is shutting down",
        "server_error",
        code="shutting_down",
        headers={"Retry-After": "5", "Connection": "close"},
    )


async def race(work: Awaitable[T], receive: Receive, drain: Drain) -> T:
    """`work`'s result; ClientGone if the client leaves first, a 503 if the drain deadline comes
    first. Either way `work` is cancelled before this returns."""
    task = asyncio.ensure_future(work)
    client_left = asyncio.ensure_future(_disconnect(receive))
    deadline = asyncio.ensure_future(drain.deadline.wait())
    try:
        await asyncio.wait({task, client_left, deadline}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (client_left, deadline):
            waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        return task.result()
    raise ClientGone() if client_left.done() and not client_left.cancelled() else shutting_down()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def error_and_done(error: APIError) -> str:
    """How a chat or text completion stream ends on an error: an error event, then `data: [DONE]`."""
    return error_event(error) + "data: [DONE]\n\n"


@dataclass(frozen=True)
class Events:
    """A stream's events, and what it sends last when the drain deadline cuts it short."""

    events: AsyncIterator[str]
    cut: Callable[[APIError], str] = error_and_done


class EventStream(Response):
    """A `text/event-stream` response of `events`, ended by `race`: nothing more once the client has
    gone; at the drain deadline the stream's own last events, so it ends as a stream should."""

    media_type = "text/event-stream"

    def __init__(self, events: Events, drain: Drain, ended: Callable[[], None]) -> None:
        # As Starlette's StreamingResponse: no body attribute, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache"})
        self.events = events.events
        self.cut = events.cut
        self.drain = drain
        self.ended = ended  # called once the stream is over, however it ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await race(self._pump(send), receive, self.drain)
        except ClientGone:
            request_cut("client_left")
            return
        except APIError as error:  # the drain deadline
            await _body(send, self.cut(error))
            request_cut("drained")
        finally:
            await self.events.aclose()  # a stream cut off between two events: its engine request ends now
            self.ended()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        async for event in self.events:
            await _body(send, event)


async def _body(send: Send, text: str) -> None:
    await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
