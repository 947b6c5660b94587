"""Image work at a lower CPU priority than text requests and the engine.

Decoding and tiling a large image keeps a core busy for as long as its pixels take; on a machine
with few cores, text chats and the engine's steps would wait for it. Linux schedules each thread on its
own, so the threads that do image work (the server's image lane and the resize bands) run at
`IMAGE_NICENESS` above the process: they take the CPU whenever nothing else wants it.
"""

from __future__ import annotations

import contextlib
import os
import threading

IMAGE_NICENESS = 5


def lower_priority(niceness: int) -> None:
    """Run the calling thread at `niceness` more than its process's main thread (where the system
    allows it). Relative to the main thread, not to the caller's own: a thread inherits the niceness
    of the thread that started it, which may be an image thread already."""
    if niceness:
        with contextlib.suppress(OSError, AttributeError):
            main = os.getpriority(os.PRIO_PROCESS, os.getpid())
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), main + niceness)
