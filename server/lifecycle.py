"""The server process's life: a drain that ends open responses properly, exit when the engine dies,
and freed memory handed back (server/memory.py).

On SIGTERM (or SIGINT) uvicorn stops accepting connections and waits up to `--graceful-timeout`
for the open ones, then cancels what is left, which cuts a stream off without its last event.
So the drain ends every response still open a little before that deadline itself: a stream gets
a final error event and `data: [DONE]`, a waiting request a 503. When the engine loop dies (a
device that no longer computes), the server cannot serve anyone: it ends its responses, stops,
and exits with status 1 so that the orchestrator starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from engine.async_engine import AsyncEngine
from engine.engine_process import EngineProcess
from server.drain import Drain
from server.memory import trim_now_and_then

log = logging.getLogger("monovl")

ENGINE_DIED_EXIT_STATUS = 1


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: AsyncEngine | EngineProcess, drain: Drain) -> None:
        super().__init__(config)
        self.engine = engine
        self.drain = drain
        self.engine_died = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        helpers = [asyncio.create_task(self._stop_when_the_engine_dies()), asyncio.create_task(trim_now_and_then())]
        try:
            await super().serve(sockets)
        finally:
            for helper in helpers:
                helper.cancel()

    async def _stop_when_the_engine_dies(self) -> None:
        error = await self.engine.wait_until_dead()
        log.critical("the engine stopped (%s: %s); the server exits", type(error).__name__, error)
        self.engine_died = True
        self.drain.begin()  # open requests end on their own: the engine has sent each its error
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler raises the signal again once it has shut down (exit status 143); a
        # drained shutdown is a clean one, exit status 0.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.drain.begin)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
