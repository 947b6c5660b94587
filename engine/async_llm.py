"""The engine's one front end: an async stream of outputs per request, over an engine core that runs
in a process of its own or on a thread (engine/core_client.py), as vLLM's `AsyncLLM` over its
engine core clients.

The server keeps HTTP, preprocessing, the outputs' text and the SSE streams; the core
(engine/engine_core.py) keeps the model, the KV cache and the step loop. The core sends token ids;
the `OutputProcessor` here makes their text, and where a stop string ends a completion it tells
the core to stop it.

Two threads here talk to the core over its pipe: one sends requests and aborts as they come
(pickling a request's tiles off the event loop, for a process), one reads each step's outputs,
makes their text and hands them to the requests' streams, waking each event loop once a step. A
request is admitted once the core has taken it, so a request it refuses fails before its response
starts. A consumer that stops listening (a client that went away) aborts its request, which frees
its KV blocks before the next step.

If the core stops (a crash, a device that failed, the OOM killer), every open stream and waiting
call gets `EngineDeadError` and `wait_until_dead` returns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator

from monovl.engine.core_client import CoreProcess, CoreThread
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
    Shutdown,
    StepOutputs,
)
from monovl.engine.engine_core import LocalPipe, Pipe
from monovl.engine.inputs import PromptInputs
from monovl.engine.output_processor import OutputProcessor
from monovl.engine.output_streams import EngineDeadError, OutputStreams, call_soon, read, resolve, taken
from monovl.engine.outputs import RequestOutput
from monovl.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class AsyncLLM:
    @classmethod
    def start(cls, core: CoreProcess | CoreThread, text: OutputProcessor) -> AsyncLLM:
        """Start `core` (whose engine sends token ids only: built with `detokenize=False`) and wait
        for its engine; the front end over it, or the build's exception. `text` makes the outputs' text."""
        pipe = core.start()
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            core.join(5)
            core.close()
            raise RuntimeError(f"the engine core stopped while starting ({core.exit_status()})") from None
        if isinstance(message, BuildFailed):
            core.join(10)
            core.close()
            raise message.error
        return cls(core, pipe, message.info, text)

    def __init__(self, core: CoreProcess | CoreThread, pipe: Pipe | LocalPipe, info: EngineInfo, text: OutputProcessor):
        """Over a started core (`start` makes one)."""
        self.core = core
        self.info = info
        self._pipe = pipe
        self._outbox: queue.Queue[object] = queue.Queue()
        self._streams = OutputStreams()
        self._text = text
        self._lock = threading.Lock()  # the waiting adds and compiles, against the engine's death
        self._adds: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._compiles: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._tickets = itertools.count()
        self._stopping = False
        self._stats = EngineStats(0, 0, 0.0, info.num_blocks)  # until the core's first step
        self.error: BaseException | None = None
        self._death_watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._threads = [
            threading.Thread(target=self._send_loop, name="monovl-engine-send", daemon=True),
            threading.Thread(target=self._receive_loop, name="monovl-engine-receive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the core (killed if it does not stop within `timeout`); every waiting caller is answered."""
        with self._lock:
            self._stopping = True
        self._fail_waiting(EngineDeadError("the engine is shutting down"))
        self._outbox.put(Shutdown())
        receiving = self._threads[1]
        if receiving.is_alive():  # it ends when the core closes its end; only then is the core joined here
            receiving.join(timeout)
        self.core.join(timeout if not receiving.is_alive() else 0)
        if self.core.alive():
            log.warning("the engine core did not stop in %.0f s; it is killed", timeout)
            self.core.kill()
        self._outbox.put(None)
        self.core.close()

    @property
    def is_running(self) -> bool:
        return self.core.alive() and self.error is None

    def stats(self) -> EngineStats:
        return self._stats  # as of the core's last step

    async def compile_grammar(self, params: SamplingParams) -> None:
        """Compile the request's grammar in the core (which keeps it for the request); RequestError if
        it cannot be, EngineDeadError if the core stops first. The caller sets the deadline."""
        if params.structured_output is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._lock:
            if self.error is not None or self._stopping:
                raise EngineDeadError("the engine is not running")
            ticket = next(self._tickets)
            self._compiles[ticket] = (loop, done)
        self._outbox.put(CompileGrammar(ticket, params))
        try:
            error = await done
        finally:
            with self._lock:
                self._compiles.pop(ticket, None)
        if error is not None:
            raise error

    async def wait_until_dead(self) -> BaseException:
        loop = asyncio.get_running_loop()
        died = loop.create_future()
        self._death_watchers.append((loop, died))
        if self.error is not None:
            return self.error
        return await died

    async def generate(
        self, request_id: str, prompt: PromptInputs, params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of all `params.n` completions as they come; leaving early aborts the request."""
        stream = self._streams.open(request_id, params.n)
        added = stream.loop.create_future()
        with self._lock:
            if self.error is not None or self._stopping:
                self._streams.close(request_id)
                raise EngineDeadError("the engine is not running")
            self._adds[request_id] = (stream.loop, added)
        self._text.add(request_id, params)
        self._outbox.put(AddRequest(request_id, prompt, params))
        error = await taken(added, lambda: self.abort(request_id))
        if error is not None:
            self._streams.close(request_id)
            self._text.remove(request_id)
            raise error
        async for output in read(stream, params.n, lambda: self.abort(request_id)):
            yield output

    def abort(self, request_id: str) -> None:
        self._streams.close(request_id)
        self._text.remove(request_id)
        self._outbox.put(AbortRequest(request_id))

    def _send_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._pipe.send(message)
            except OSError:  # the core is gone; the receiving thread reports it
                return
            if isinstance(message, Shutdown):
                return

    def _receive_loop(self) -> None:
        error: BaseException | None = None
        try:
            while error is None:
                error = self._take(self._pipe.recv())
        except (EOFError, OSError):
            if self._stopping:
                return
            self.core.join(5)
            error = EngineDeadError(f"the engine core stopped ({self.core.exit_status()})")
        if not self._stopping:
            log.error("the engine core stopped: %s", error)
            self._die(error)

    def _take(self, message: object) -> BaseException | None:
        """Act on one message from the core; the error that ends it, when the core died."""
        if isinstance(message, StepOutputs):
            self._stats = message.stats
            processed = self._text.process(message.outputs)
            for request_id, index in processed.stopped:
                self._outbox.put(AbortRequest(request_id, index))
            self._streams.deliver(processed.outputs)
        elif isinstance(message, Added):
            with self._lock:
                loop, added = self._adds.pop(message.request_id)
            call_soon(loop, resolve, added, message.error)
        elif isinstance(message, Compiled):
            with self._lock:
                waiting = self._compiles.pop(message.ticket, None)
            if waiting is not None:  # None: its caller gave up
                call_soon(waiting[0], resolve, waiting[1], message.error)
        elif isinstance(message, CoreDied):
            return message.error
        return None

    def _die(self, error: BaseException) -> None:
        """Every waiting caller gets EngineDeadError; the watchers get what stopped the core."""
        with self._lock:
            self.error = error
        self._fail_waiting(error if isinstance(error, EngineDeadError) else EngineDeadError(str(error)))
        for loop, died in self._death_watchers:
            call_soon(loop, resolve, died, error)

    def _fail_waiting(self, dead: EngineDeadError) -> None:
        with self._lock:
            waiting = [*self._adds.values(), *self._compiles.values()]
            self._adds, self._compiles = {}, {}
        self._streams.fail_all(dead)
        for loop, future in waiting:
            call_soon(loop, resolve, future, dead)
