"""HeapTrimmer: freed heap memory handed back at most once an interval."""

import time

from monovl.engine import heap
from monovl.engine.heap import HeapTrimmer


def test_the_heap_is_trimmed_once_the_interval_has_passed_and_not_before(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(heap, "libc_function", lambda name: lambda pad: calls.append(pad) or 1)
    trimmer = HeapTrimmer(interval=0.05)
    trimmer.trim_if_due()
    assert calls == []
    time.sleep(0.06)
    trimmer.trim_if_due()
    trimmer.trim_if_due()
    assert calls == [0]


def test_without_malloc_trim_nothing_happens(monkeypatch):
    monkeypatch.setattr(heap, "libc_function", lambda name: None)
    trimmer = HeapTrimmer(interval=0.0)
    trimmer.trim_if_due()  # musl or macOS: no call to make, no error


def test_this_c_library_has_malloc_trim():
    assert heap.libc_function("malloc_trim") is not None  # glibc, as in the images
