"""The drain: whether the server has stopped taking work, and when its open responses must end.

server/lifecycle.py begins it on SIGTERM and when the engine dies; responses still open a little
before uvicorn's graceful deadline are ended by server/streaming.py.
"""

from __future__ import annotations

import asyncio

GRACEFUL_TIMEOUT_S = 30.0


class Drain:
    """Whether the server has stopped taking work, and an event set when open responses must end."""

    def __init__(self, graceful_timeout: float = GRACEFUL_TIMEOUT_S) -> None:
        self.graceful_timeout = graceful_timeout
        self.draining = False
        self.deadline = asyncio.Event()

    def begin(self) -> None:
        """On the event loop: stop taking work; end open responses in time for uvicorn's deadline."""
        if self.draining:
            return
        self.draining = True
        margin = min(1.0, self.graceful_timeout / 10)
        asyncio.get_running_loop().call_later(max(0.0, self.graceful_timeout - margin), self.deadline.set)
