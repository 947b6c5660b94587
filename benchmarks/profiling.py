"""A torch profiler table around a piece of a benchmark, for `--profile`: where its time goes."""

from __future__ import annotations

from collections.abc import Callable
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
