"""The server process's life: a drain that loses no request (server/drain.py), exit when the engine
dies, and freed memory handed back (server/memory.py).

uvicorn, told to exit, closes its port at once and cancels what is still open after its graceful
timeout, cutting a stream off without its last event. So it is told only once the drain is over:
after `--drain-delay` (still serving, /health 503) and once the open responses have ended, or the
drain's deadline has ended them. When the engine loop dies (a device that no longer computes), the
server cannot serve anyone: it ends its responses, stops, and exits with status 1 so that the
orchestrator starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from monovl.server.memory import trim_now_and_then
from monovl.server.state import ServerState

log = logging.getLogger("monovl")

ENGINE_DIED_EXIT_STATUS = 1
_OPEN_WORK_POLL_S = 0.05


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.engine = state.engine
        self.drain = state.drain
        self.state = state
        self.engine_died = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        helpers = [
            asyncio.create_task(self._stop_when_the_engine_dies()),
            asyncio.create_task(self._stop_when_drained()),
            asyncio.create_task(trim_now_and_then()),
        ]
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

    async def _stop_when_drained(self) -> None:
        """Once refusing has begun: uvicorn stops when no response is open, or at the deadline."""
        await self.drain.refusing.wait()
        loop = asyncio.get_running_loop()
        began = loop.time()
        while self.state.in_flight > 0 and not self.drain.deadline.is_set():
            await asyncio.sleep(_OPEN_WORK_POLL_S)
        # What uvicorn waits for now is what the deadline has just ended, or nothing.
        left = self.drain.graceful_timeout - (loop.time() - began)
        self.config.timeout_graceful_shutdown = max(1.0, left)
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn's own handler raises the signal again once it has shut down (exit status 143); a
        # drained shutdown is a clean one, exit status 0.
        if self._loop is None:  # before serving: nothing to drain
            self.should_exit = True
            return
        if sig == signal.SIGINT and self.drain.unready:  # a second Ctrl-C: stop now
            self.force_exit = True
            self.should_exit = True
            return
        # A person's Ctrl-C or a second SIGTERM does not wait for load balancers.
        delay = 0.0 if sig == signal.SIGINT or self.drain.unready else self.state.settings.drain_delay
        self._loop.call_soon_threadsafe(self.drain.begin, delay)
