"""The drain: a shutdown that loses no request, in three steps.

1. Unready (SIGTERM, for `--drain-delay` seconds): `/health` answers 503 so that load balancers stop
   sending here, while requests that still arrive are served as usual.
2. Refusing: new work gets a 503 `shutting_down` (not run, so a proxy may retry it elsewhere) and
   the connection is closed; the port stays open, so `/health` keeps answering 503, until the open
   responses have ended.
3. The deadline, `--graceful-timeout` seconds after refusing began: responses still open end
   properly (server/streaming.py: a stream's error event and `data: [DONE]`, a waiting request's 503)
   in time for uvicorn, which then stops.

server/lifecycle.py begins it on SIGTERM (SIGINT and a dead engine skip the delay).
"""

from __future__ import annotations

import asyncio

GRACEFUL_TIMEOUT_S = 30.0


class Drain:
    def __init__(self, graceful_timeout: float = GRACEFUL_TIMEOUT_S) -> None:
        self.graceful_timeout = graceful_timeout
        self.unready = False  # /health answers 503
        self.refusing = asyncio.Event()  # new work is refused
        self.deadline = asyncio.Event()  # open responses must end
        self._refuse_later: asyncio.TimerHandle | None = None

    def begin(self, delay: float = 0.0) -> None:
        """On the event loop: unready now, refusing new work after `delay` seconds. Again with no
        delay (a second signal, the engine's death): refusing at once."""
        if self.draining:
            return
        self.unready = True
        if delay > 0:
            if self._refuse_later is None:
                self._refuse_later = asyncio.get_running_loop().call_later(delay, self._refuse)
            return
        if self._refuse_later is not None:
            self._refuse_later.cancel()
        self._refuse()

    @property
    def draining(self) -> bool:
        """Whether new work is refused."""
        return self.refusing.is_set()

    def _refuse(self) -> None:
        self.refusing.set()
        margin = min(1.0, self.graceful_timeout / 10)
        asyncio.get_running_loop().call_later(max(0.0, self.graceful_timeout - margin), self.deadline.set)
