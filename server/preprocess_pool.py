"""A bounded pool of worker threads off the event loop, which heals itself.

Preprocessing (decode, tiling, tokenizing) runs on one; remote image fetches, which wait on the
network, on another, so slow hosts cannot hold up the images that came with their requests.
Work runs on threads (PIL and sentencepiece release the GIL for the heavy parts). An exception in
a job fails that request only. If the executor refuses a job (it stopped, or broke) while the pool
is open, it is replaced and the job submitted again; after `shutdown`, a job is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from typing import TypeVar

from monovl.preprocessing.cpu_priority import lower_priority

T = TypeVar("T")
log = logging.getLogger(__name__)


class PoolClosed(RuntimeError):
    """The server is shutting down: no more work is taken."""


class PreprocessPool:
    def __init__(self, workers: int, name: str = "monovl-preprocess", niceness: int = 0) -> None:
        """`niceness`: each worker thread's, added to the process's (Linux schedules threads alone)."""
        if workers < 1:
            raise ValueError(f"a worker pool needs at least one thread, not {workers}")
        self.workers = workers
        self.name = name
        self.niceness = niceness
        self.executor = self._new()
        self.restarts = 0
        self.closed = False

    def _new(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix=self.name,
            initializer=lower_priority,
            initargs=(self.niceness,),
        )

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.closed:
            raise PoolClosed(f"the {self.name} pool is shut down")
        try:
            future = self.executor.submit(fn, *args)
        except (BrokenExecutor, RuntimeError) as error:  # raised by submit only: the executor is not running
            log.warning("%s pool stopped (%s); starting a new one", self.name, error)
            self.executor = self._new()
            self.restarts += 1
            future = self.executor.submit(fn, *args)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self.closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)
