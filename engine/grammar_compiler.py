"""Grammar compiles off every serving thread, each within a time limit.

`submit` answers at once with a future; compiles run on daemon threads of their own, so no HTTP
worker, engine step or process exit waits on one. A spec not cached yet is tried first in a probe
process (engine/grammar_probe.py) that is killed at the time limit; only a spec that compiled there
in time is compiled here, which takes about as long again. A job that waits in the queue past the
time limit is refused as busy, so every future is answered within about three times the limit
(plus the probe's first start). Requests for a spec already being compiled share its compile.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING

from monovl.engine.grammar_probe import GrammarProbe
from monovl.engine.structured_output import Grammars, StructuredOutput

if TYPE_CHECKING:
    import xgrammar

log = logging.getLogger(__name__)


class CompilerBusy(RuntimeError):
    """The compile did not start within its time limit: others filled the compiler."""

    code = "grammar_compiler_busy"


class CompilerClosed(RuntimeError):
    """The engine is shutting down."""

    code = "engine_shutting_down"


class GrammarCompiler:
    def __init__(self, grammars: Grammars, timeout: float, workers: int = 1) -> None:
        if timeout <= 0 or workers < 1:
            raise ValueError(f"a grammar compiler needs a positive time limit and a worker, not {timeout}, {workers}")
        self.grammars = grammars
        self.timeout = timeout
        self._jobs: queue.Queue[tuple[StructuredOutput, float] | None] = queue.Queue()
        self._pending: dict[StructuredOutput, Future] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._probes = [GrammarProbe(grammars.vocabulary, grammars.any_whitespace) for _ in range(workers)]
        self._threads = [
            threading.Thread(target=self._work, args=(probe,), name="monovl-grammar", daemon=True)
            for probe in self._probes
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, spec: StructuredOutput) -> Future[xgrammar.CompiledGrammar]:
        """The compiled grammar, or GrammarError, CompilerBusy or CompilerClosed."""
        compiled = self.grammars.cached(spec)
        with self._lock:
            future = Future() if compiled is not None or self._closed else self._pending.get(spec)
            if future is None:
                future = self._pending[spec] = Future()
                self._jobs.put((spec, time.monotonic()))
        if compiled is not None:
            future.set_result(compiled)
        elif self._closed:
            future.set_exception(CompilerClosed("the engine is shutting down"))
        return future

    def shutdown(self) -> None:
        """Answer every waiting future, stop the workers and kill the probes (a compile in flight is
        abandoned on its daemon thread)."""
        with self._lock:
            self._closed = True
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            with contextlib.suppress(InvalidStateError):  # answered by its worker meanwhile
                future.set_exception(CompilerClosed("the engine is shutting down"))
        for _ in self._threads:
            self._jobs.put(None)
        for probe in self._probes:
            probe.stop()

    def _work(self, probe: GrammarProbe) -> None:
        while (job := self._jobs.get()) is not None:
            spec, queued = job
            with self._lock:
                future = self._pending.get(spec)
            if future is None:  # answered at shutdown
                continue
            try:
                compiled = self._compile(probe, spec, queued)
            except BaseException as error:  # every error is the waiting request's answer
                self._answer(spec, future, error=error)
            else:
                self._answer(spec, future, compiled)

    def _compile(self, probe: GrammarProbe, spec: StructuredOutput, queued: float) -> xgrammar.CompiledGrammar:
        compiled = self.grammars.cached(spec)
        if compiled is not None:
            return compiled
        waited = time.monotonic() - queued
        if waited > self.timeout:
            raise CompilerBusy(f"the server is busy compiling other constraints (waited {waited:.1f} s); try again")
        started = time.perf_counter()
        probe.check(spec, self.timeout)
        compiled = self.grammars.compile(spec)
        log.debug("compiled a %s constraint in %.2f s", spec.kind, time.perf_counter() - started)
        return compiled

    def _answer(
        self,
        spec: StructuredOutput,
        future: Future,
        compiled: xgrammar.CompiledGrammar | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            if self._pending.get(spec) is future:
                del self._pending[spec]
        with contextlib.suppress(InvalidStateError):  # answered by shutdown meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(compiled)
