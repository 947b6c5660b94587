"""The bounded worker pool that decodes, tiles and tokenizes off the event loop, and heals itself.

Work runs on threads (PIL and sentencepiece release the GIL for the heavy parts). An exception in
a job fails that request only; if the pool itself stops taking work (shut down or broken), it is
replaced and the job is retried once, so one failure does not take preprocessing down for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class PreprocessPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = self._new()
        self.restarts = 0

    def _new(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="monovl-preprocess")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, fn, *args)
        except (BrokenExecutor, RuntimeError) as error:
            if not _pool_is_gone(error):
                raise
            log.warning("preprocessing pool stopped (%s); starting a new one", error)
            self.executor = self._new()
            self.restarts += 1
            return await loop.run_in_executor(self.executor, fn, *args)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _pool_is_gone(error: BaseException) -> bool:
    return isinstance(error, BrokenExecutor) or "after shutdown" in str(error) or "interpreter shutdown" in str(error)
