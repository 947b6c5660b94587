"""Where the engine core runs, behind one front end (engine/async_llm.py): a process of its own
(`CoreProcess`, the default) or a thread of the server's process (`CoreThread`, `--engine-thread`).
Either runs the same loop (engine/engine_core.py) and gives the front end one end of a pipe.

In a process, the core's Python (scheduling, sampling) never waits for the server's GIL; messages
are pickled. On a thread the core shares the GIL but nothing is copied, and the engine stays
reachable in-process (`CoreThread.engine`). Either way the engine is built where it runs: in its
process, or on its thread, so that one thread runs all of the process's parallel torch work (with
torch's OpenMP, every thread that runs a parallel region keeps a team of worker threads; once the
process holds more of them than it has CPUs, each small op waits for a futex wake-up:
`benchmarks/serve_workload.py --run-on-another-thread` shows the cost).
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable

from monovl.engine.engine_core import LocalPipe, Pipe, run_core, serve_core
from monovl.engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)


class CoreProcess:
    def __init__(self, build: Callable[[], LLMEngine], configure_logging: Callable[[], None] | None = None) -> None:
        """`build` and `configure_logging` are pickled to the new process (spawned, not forked:
        torch's threads do not survive a fork)."""
        context = multiprocessing.get_context("spawn")
        self._conn, self._child = context.Pipe(duplex=True)
        self._process = context.Process(
            target=run_core, args=(build, self._child, configure_logging), name="monovl-engine", daemon=True
        )

    def start(self) -> Pipe:
        self._process.start()
        self._child.close()
        return Pipe(self._conn)

    def alive(self) -> bool:
        return self._process.is_alive()

    def join(self, timeout: float) -> None:
        self._process.join(timeout)

    def kill(self) -> None:
        self._process.kill()
        self._process.join(5)

    def exit_status(self) -> str:
        code = self._process.exitcode
        if code is None:
            return "still running, its pipe closed"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def close(self) -> None:
        self._conn.close()


class CoreThread:
    def __init__(self, build: Callable[[], LLMEngine]) -> None:
        self._build = build
        self._pipe, core_end = LocalPipe.pair()
        self.engine: LLMEngine | None = None  # once built, for in-process callers (tests, tools)
        self._thread = threading.Thread(target=self._run, args=(core_end,), name="monovl-engine", daemon=True)

    def start(self) -> LocalPipe:
        self._thread.start()
        return self._pipe

    def _run(self, pipe: LocalPipe) -> None:
        def build() -> LLMEngine:
            self.engine = self._build()
            return self.engine

        serve_core(build, pipe)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def kill(self) -> None:
        log.warning("the engine thread did not stop; it is left to end with the process")

    def exit_status(self) -> str:
        return "the engine thread ended"

    def close(self) -> None:
        self._pipe.close()
