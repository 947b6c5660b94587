"""The drain: whether the server has stopped taking work, and when its open responses must end.

server/lifecycle.py begins it on SIGTERM (ending responses a little before uvicorn's graceful
deadline) or at once when the engine dies; server/streaming.py ends responses on it.
"""

from __future__ import annotations

import asyncio


class Drain:
    """Whether the server has stopped taking work, and an event set when open responses must end."""

    def __init__(self, graceful_timeout: float) -> None:
        self.graceful_timeout = graceful_timeout
        self.draining = False
        self.deadline = asyncio.Event()

    def begin(self, immediately: bool = False) -> None:
        """On the event loop: stop taking work; end open responses in time for uvicorn's deadline."""
        if self.draining:
            if immediately:
                self.deadline.set()
            return
        self.draining = True
        margin = min(1.0, self.graceful_timeout / 10)
        delay = 0.0 if immediately else max(0.0, self.graceful_timeout - margin)
        asyncio.get_running_loop().call_later(delay, self.deadline.set)
