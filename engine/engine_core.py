"""The engine core's loop in a process of its own: messages in, steps, outputs out.

The process holds nothing but the engine, so its Python (scheduling, sampling)
never waits for the server's GIL. Between steps it takes every message waiting on its pipe;
with nothing to run it sleeps on the pipe. The server's end closing (its process gone) ends the
loop. Grammars compile on the engine's grammar compiler (engine/grammar_compiler.py), which answers
here when done. Signals are the server's to handle: it drains, then sends `Shutdown`.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection

from monovl.engine.core_messages import (
    AbortRequest,
    Added,
    AddRequest,
    BuildFailed,
    Compiled,
    CompileGrammar,
    CoreDied,
    EngineInfo,
    EngineStats,
    Ready,
    Shutdown,
    StepOutputs,
)
from monovl.engine.heap import TRIM_INTERVAL_S, HeapTrimmer
from monovl.engine.llm_engine import LLMEngine, RequestError

log = logging.getLogger(__name__)


def run_core(build: Callable[[], LLMEngine], conn: Connection, configure_logging: Callable[[], None] | None) -> None:
    """The engine process's main function (a `multiprocessing` target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if configure_logging is not None:
        configure_logging()
    else:
        logging.basicConfig(level=logging.INFO)
    pipe = Pipe(conn)
    try:
        engine = build()
    except BaseException as error:
        pipe.send(BuildFailed(_picklable(error)))
        return
    pipe.send(Ready(EngineInfo.of(engine)))
    EngineCore(engine, pipe).run()


class Pipe:
    """One end of the pipe; sends are whole messages, from more than one thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()

    def send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self.conn.send_bytes(data)

    def recv(self) -> object:
        return pickle.loads(self.conn.recv_bytes())


class EngineCore:
    def __init__(self, engine: LLMEngine, pipe: Pipe) -> None:
        self.engine = engine
        self.pipe = pipe
        self.heap = HeapTrimmer()  # a request's tiles and their pickled copy are freed here

    def run(self) -> None:
        try:
            while self._take_messages():
                if self.engine.has_unfinished():
                    outputs = self.engine.step()  # waits a moment when only grammars are compiling
                    if outputs or self.engine.has_runnable():
                        self.pipe.send(StepOutputs(outputs, EngineStats.of(self.engine)))
                self.heap.trim_if_due()
        except (EOFError, OSError):  # the server's end closed: nobody is left to serve
            log.warning("the server's end of the engine pipe closed; the engine process exits")
        except BaseException as error:
            log.exception("engine loop died")
            with contextlib.suppress(OSError):
                self.pipe.send(CoreDied(_picklable(error)))
            raise
        finally:
            self.engine.close()

    def _take_messages(self) -> bool:
        """Handle every waiting message; with no request to step, wait for one. False: shut down."""
        conn = self.pipe.conn
        took = False
        while True:
            idle = not self.engine.has_unfinished() and not took
            if not conn.poll(TRIM_INTERVAL_S if idle else 0):
                if not idle:
                    break
                self.heap.trim_if_due()  # what the last requests freed goes back while nothing runs
                continue
            message = self.pipe.recv()
            if isinstance(message, Shutdown):
                return False
            self._handle(message)
            took = True
        if took and not self.engine.has_unfinished():  # an abort emptied the engine: the gauges move
            self.pipe.send(StepOutputs([], EngineStats.of(self.engine)))
        return True

    def _handle(self, message: object) -> None:
        if isinstance(message, AddRequest):
            try:
                self.engine.add_request(message.request_id, message.prompt, message.params)
            except Exception as error:  # a RequestError, or this request's own failure: its caller's
                if not isinstance(error, RequestError):
                    log.exception("adding request %s failed", message.request_id)
                self.pipe.send(Added(message.request_id, _picklable(error)))
            else:
                self.pipe.send(Added(message.request_id, None))
        elif isinstance(message, AbortRequest):
            self.engine.abort_request(message.request_id, message.index)
        elif isinstance(message, CompileGrammar):
            compiling = self.engine.compile_grammar(message.params)
            compiling.add_done_callback(lambda done, ticket=message.ticket: self._compiled(ticket, done))
        else:
            log.error("the engine got a message it does not know: %r", type(message).__name__)

    def _compiled(self, ticket: int, done: Future) -> None:
        """Answer a compile (on the compiler's thread); after shutdown nobody is listening."""
        error = done.exception()
        with contextlib.suppress(OSError):
            self.pipe.send(Compiled(ticket, _picklable(error) if error is not None else None))


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
