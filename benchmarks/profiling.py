"""Where a benchmark's time goes: a torch profiler table for `--profile`, and timers on named calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

T = TypeVar("T")


def print_profile(fn: Callable[[], T], sort_by: str, rows: int = 20) -> T:
    """Run fn under the profiler (CUDA kernels too where there is a GPU), print the top rows, return fn's result."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=70))
    return result


@contextmanager
def timing(owner: object, name: str, totals: dict[str, float], part: str) -> Iterator[None]:
    """Add the seconds spent in calls to `owner.name` to totals[part] while in this block."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[part] += time.perf_counter() - started

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)
