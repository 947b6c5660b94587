"""Each request's outputs as an async stream on its event loop, fed from the engine's side.

The thread that reads the engine core's pipe (engine/async_llm.py) hands a step's outputs to
`deliver`: one wake-up of each event loop a
step, not one an output, since every `call_soon_threadsafe` writes to the loop's self-pipe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from monovl.engine.llm_engine import RequestError
from monovl.engine.outputs import RequestOutput

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine stopped; no request can be served."""


class EngineNotAnswering(RuntimeError):
    """The engine did not take a request within `TAKE_DEADLINE_S`: it runs, but its step is stuck."""


# An engine takes new requests between two steps; no step of a working engine takes this long.
TAKE_DEADLINE_S = 120.0


async def taken(added: asyncio.Future, abort: Callable[[], None]) -> BaseException | None:
    """What the engine answered a new request (None, or the error that refused it), within
    `TAKE_DEADLINE_S`; past it (or when the caller leaves) the request is aborted."""
    try:
        return await asyncio.wait_for(added, TAKE_DEADLINE_S)
    except asyncio.TimeoutError:
        abort()
        raise EngineNotAnswering(f"the engine did not take the request within {TAKE_DEADLINE_S:g} s") from None
    except asyncio.CancelledError:  # the client left while the engine took it
        abort()
        raise


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    remaining: int  # completions the engine has not finished yet (n of them)


class OutputStreams:
    """The open streams by request id; opened on the event loop, fed and closed from the engine's side."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    def open(self, request_id: str, n: int) -> _Stream:
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), n)
        with self._lock:
            if request_id in self._streams:
                raise RequestError(None, f"request id {request_id!r} is already running")
            self._streams[request_id] = stream
        return stream

    def close(self, request_id: str) -> None:
        with self._lock:
            self._streams.pop(request_id, None)

    def deliver(self, outputs: list[RequestOutput]) -> None:
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        with self._lock:
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is None:
                    continue
                if output.finished:
                    stream.remaining -= 1
                    if stream.remaining == 0:
                        del self._streams[output.request_id]
                deliveries.setdefault(stream.loop, []).append((stream.outputs, output))
        for loop, items in deliveries.items():
            call_soon(loop, _deliver, items)

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            call_soon(stream.loop, stream.outputs.put_nowait, error)


async def read(stream: _Stream, n: int, abort: Callable[[], None]) -> AsyncIterator[RequestOutput]:
    """The outputs of all `n` completions as they come; leaving early calls `abort`."""
    done = 0
    try:
        while done < n:
            item = await stream.outputs.get()
            if isinstance(item, BaseException):
                raise item
            done += item.finished
            yield item
    finally:
        if done < n:
            abort()


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """Hand `callback` to `loop`; a loop that has closed (its server gone) must not stop the engine."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        log.warning("an event loop closed with requests still open; their outputs are dropped")


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for outputs, output in items:
        outputs.put_nowait(output)


def resolve(future: asyncio.Future, value: object = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
