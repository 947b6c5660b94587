"""The engine core's loop: messages in, steps, outputs out, over a pipe to the front end
(engine/async_llm.py), in a process of its own (`run_core`) or on a thread of the server's
(`serve_core` over a `LocalPipe`; engine/core_client.py starts either).

Between steps the core takes every message waiting on its pipe; with nothing to run it sleeps on
the pipe. The front end's end closing (its process gone) ends the loop. Grammars compile on the
engine's grammar compiler (engine/grammar_compiler.py), which answers here when done. Signals are
the server's to handle: it drains, then sends `Shutdown`.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
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
    if serve_core(build, Pipe(conn)) is not None:
        raise SystemExit(1)  # the front end has the error; the exit status says the core failed


def serve_core(build: Callable[[], LLMEngine], pipe: Pipe | LocalPipe) -> BaseException | None:
    """Build the engine and run its loop over `pipe` until `Shutdown` or the front end's end closes;
    the error that stopped the loop, if one did (the front end has been told)."""
    try:
        engine = build()
    except BaseException as error:
        pipe.send(BuildFailed(_picklable(error)))
        return error
    try:
        pipe.send(Ready(EngineInfo.of(engine)))
        return EngineCore(engine, pipe).run()
    finally:
        pipe.close()


class Pipe:
    """One end of a process pipe; sends are whole messages, from more than one thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()

    def send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self.conn.send_bytes(data)

    def recv(self) -> object:
        return pickle.loads(self.conn.recv_bytes())

    def poll(self, timeout: float) -> bool:
        return self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()


_CLOSED = object()  # what a LocalPipe's end sends as it closes


class LocalPipe:
    """One end of a pipe within a process (the core on a thread): `Pipe`'s messages, not pickled.
    As a connection's, a closed peer makes `poll` true and `recv` raise EOFError."""

    def __init__(self, inbox: queue.Queue, outbox: queue.Queue) -> None:
        self._inbox, self._outbox = inbox, outbox
        self._waiting: list[object] = []  # what `poll` took off the queue before `recv` asked

    @classmethod
    def pair(cls) -> tuple[LocalPipe, LocalPipe]:
        one, other = queue.Queue(), queue.Queue()
        return cls(one, other), cls(other, one)

    def send(self, message: object) -> None:
        self._outbox.put(message)

    def recv(self) -> object:
        message = self._waiting.pop() if self._waiting else self._inbox.get()
        if message is _CLOSED:
            self._waiting.append(_CLOSED)  # closed for good
            raise EOFError("the other end closed")
        return message

    def poll(self, timeout: float) -> bool:
        if not self._waiting:
            try:
                self._waiting.append(self._inbox.get(timeout=timeout))
            except queue.Empty:
                return False
        return True

    def close(self) -> None:
        self._outbox.put(_CLOSED)


class EngineCore:
    def __init__(self, engine: LLMEngine, pipe: Pipe | LocalPipe) -> None:
        self.engine = engine
        self.pipe = pipe
        self.heap = HeapTrimmer()  # a request's tiles and their pickled copy are freed here

    def run(self) -> BaseException | None:
        """The loop; the error that stopped it, if one did (sent to the front end as `CoreDied`)."""
        try:
            while self._take_messages():
                if self.engine.has_unfinished():
                    outputs = self.engine.step()  # waits a moment when only grammars are compiling
                    if outputs or self.engine.has_runnable():
                        self.pipe.send(StepOutputs(outputs, EngineStats.of(self.engine)))
                self.heap.trim_if_due()
        except (EOFError, OSError):  # the front end's end closed: nobody is left to serve
            log.warning("the front end's end of the engine pipe closed; the engine core stops")
        except BaseException as error:
            log.exception("engine loop died")
            with contextlib.suppress(OSError):
                self.pipe.send(CoreDied(_picklable(error)))
            return error
        finally:
            self.engine.close()
        return None

    def _take_messages(self) -> bool:
        """Handle every waiting message; with no request to step, wait for one. False: shut down."""
        took = False
        while True:
            idle = not self.engine.has_unfinished() and not took
            if not self.pipe.poll(TRIM_INTERVAL_S if idle else 0):
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
