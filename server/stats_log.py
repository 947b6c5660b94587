"""The engine's line in the log every few seconds while it is busy, as vLLM writes it: prompt and
generation throughput over the interval, running and waiting requests, KV cache use and the
prefix cache's hit rate."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from monovl.server.metrics import Metrics

log = logging.getLogger("monovl.stats")


@dataclass
class Snapshot:
    at: float
    prompt_tokens: float
    generation_tokens: float
    cache_queries: float
    cache_hits: float

    @classmethod
    def take(cls, metrics: Metrics) -> Snapshot:
        return cls(
            time.monotonic(),
            metrics.value("prompt_tokens_total"),
            metrics.value("generation_tokens_total"),
            metrics.value("prefix_cache_queries_total"),
            metrics.value("prefix_cache_hits_total"),
        )


def stats_line(before: Snapshot, now: Snapshot, running: int, waiting: int, kv_usage: float) -> str | None:
    """The interval's line; None when the engine was idle all through it."""
    prompt = now.prompt_tokens - before.prompt_tokens
    generated = now.generation_tokens - before.generation_tokens
    if not (prompt or generated or running or waiting):
        return None
    seconds = max(now.at - before.at, 1e-9)
    queries = now.cache_queries - before.cache_queries
    hit_rate = (now.cache_hits - before.cache_hits) / queries if queries else 0.0
    return (
        f"Avg prompt throughput: {prompt / seconds:.1f} tokens/s, "
        f"Avg generation throughput: {generated / seconds:.1f} tokens/s, "
        f"Running: {running} reqs, Waiting: {waiting} reqs, "
        f"KV cache usage: {kv_usage * 100:.1f}%, Prefix cache hit rate: {hit_rate * 100:.1f}%"
    )


async def log_stats_every(interval: float, metrics: Metrics) -> None:
    before = Snapshot.take(metrics)
    while True:
        await asyncio.sleep(interval)
        now = Snapshot.take(metrics)
        running, waiting = int(metrics.value("num_requests_running")), int(metrics.value("num_requests_waiting"))
        line = stats_line(before, now, running, waiting, metrics.value("kv_cache_usage_perc"))
        if line is not None:
            log.info(line)
        before = now
