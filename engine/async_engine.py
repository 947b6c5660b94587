"""The engine loop on its own thread, and an async stream of outputs per request.

The event loop never runs a forward: requests and aborts cross to the engine thread through a
queue, and each step's outputs come back through `loop.call_soon_threadsafe` into one
`asyncio.Queue` per request. A consumer that stops listening (a client that went away) aborts its
request, which frees its KV blocks before the next step.

The engine is built on its thread too (`build` loads the model there), so that one thread runs
all of the server's parallel torch work. With torch's OpenMP (libgomp) every thread that runs a
parallel region keeps a team of worker threads; once the process holds more of them than it has
CPUs, idle workers stop spinning and each small op waits for a futex wake-up
(`benchmarks/serve_workload.py --run-on-another-thread` shows the cost).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable

from monovl.engine.core_messages import EngineInfo, EngineStats
from monovl.engine.inputs import PromptInputs
from monovl.engine.llm_engine import LLMEngine
from monovl.engine.output_streams import EngineDeadError, OutputStreams, call_soon, read, resolve, taken
from monovl.engine.outputs import RequestOutput
from monovl.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, build: Callable[[], LLMEngine]) -> None:
        self._build = build
        self.engine: LLMEngine | None = None  # set by start()
        self.info: EngineInfo | None = None  # set by start()
        self._built = threading.Event()
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._streams = OutputStreams()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="monovl-engine", daemon=True)
        self.error: BaseException | None = None
        self._death_watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def start(self) -> EngineInfo:
        """Start the thread, build the engine on it and describe it; the build's exception is raised here."""
        self._thread.start()
        self._built.wait()
        if self.engine is None:
            self._thread.join()
            raise self.error
        self.info = EngineInfo.of(self.engine)
        return self.info

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def stats(self) -> EngineStats:
        return EngineStats.of(self.engine)  # a few reads of ints; a step in flight may be half counted

    async def compile_grammar(self, params: SamplingParams) -> None:
        """Compile the request's grammar on the engine's grammar compiler (the engine finds it
        cached); RequestError if it cannot be. The caller sets the deadline."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        await asyncio.wrap_future(self.engine.compile_grammar(params))

    async def wait_until_dead(self) -> BaseException:
        """Return the error that stopped the engine loop, once it has (the server exits on it)."""
        loop = asyncio.get_running_loop()
        died = loop.create_future()
        self._death_watchers.append((loop, died))
        if self.error is not None:  # set before this watcher was listed
            return self.error
        return await died

    async def generate(
        self, request_id: str, prompt: PromptInputs, params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of all `params.n` completions as they come; leaving early aborts the request."""
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        stream = self._streams.open(request_id, params.n)
        added: asyncio.Future = stream.loop.create_future()

        def add() -> None:
            try:
                self.engine.add_request(request_id, prompt, params)
            except Exception as error:
                self._streams.close(request_id)
                call_soon(stream.loop, resolve, added, error)
                return
            call_soon(stream.loop, resolve, added, None)

        self._submit(add)
        error = await taken(added, lambda: self.abort(request_id))
        if error is not None:
            raise error
        async for output in read(stream, params.n, lambda: self.abort(request_id)):
            yield output

    def abort(self, request_id: str) -> None:
        def abort() -> None:
            self._streams.close(request_id)
            self.engine.abort_request(request_id)

        self._submit(abort)

    def call(self, fn: Callable[[], object]) -> asyncio.Future:
        """Run `fn` on the engine thread between steps (for tests); await its result."""
        loop = asyncio.get_running_loop()
        result = loop.create_future()

        def run() -> None:
            try:
                value = fn()
            except Exception as error:
                call_soon(loop, resolve, result, None, error)
            else:
                call_soon(loop, resolve, result, value)

        self._submit(run)
        return result

    def _submit(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        self._wake.set()

    def _run(self) -> None:
        try:
            self.engine = self._build()
        except BaseException as error:  # start() raises it on the caller's thread
            self.error = error
            return
        finally:
            self._built.set()
        try:
            while not self._stopping:
                self._drain_commands()
                if not self.engine.has_unfinished():  # with only grammars compiling, a step waits for them
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self._streams.deliver(self.engine.step())
        except BaseException as error:
            log.exception("engine loop died")
            self.error = error
            self._streams.fail_all(EngineDeadError(str(error)))
            for loop, died in self._death_watchers:
                call_soon(loop, resolve, died, error)
        finally:
            self.engine.close()

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except Exception:  # an abort or a stats call that fails is that caller's problem, not the loop's
                log.exception("an engine command failed")
