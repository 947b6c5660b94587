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
from dataclasses import dataclass

from engine.inputs import PromptInputs
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue
    remaining: int  # completions the engine has not finished yet (n of them)


class EngineDeadError(RuntimeError):
    """The engine thread stopped; no request can be served."""


class AsyncEngine:
    def __init__(self, build: Callable[[], LLMEngine]) -> None:
        self._build = build
        self.engine: LLMEngine | None = None  # set by start()
        self._built = threading.Event()
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="monovl-engine", daemon=True)
        self.error: BaseException | None = None
        self._death_watchers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def start(self) -> LLMEngine:
        """Start the thread, build the engine on it and return it; the build's exception is raised here."""
        self._thread.start()
        self._built.wait()
        if self.engine is None:
            self._thread.join()
            raise self.error
        return self.engine

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

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
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), params.n)
        added: asyncio.Future = stream.loop.create_future()

        def add() -> None:
            try:
                self.engine.add_request(request_id, prompt, params)
            except Exception as error:
                _call_soon(stream.loop, _resolve, added, error)
                return
            self._streams[request_id] = stream
            _call_soon(stream.loop, _resolve, added, None)

        self._submit(add)
        error = await added
        if error is not None:
            raise error
        done = 0
        try:
            while done < params.n:
                item = await stream.outputs.get()
                if isinstance(item, BaseException):
                    raise item
                done += item.finished
                yield item
        finally:
            if done < params.n:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        def abort() -> None:
            self._streams.pop(request_id, None)
            self.engine.abort_request(request_id)

        self._submit(abort)

    def call(self, fn: Callable[[], object]) -> asyncio.Future:
        """Run `fn` on the engine thread between steps (for stats and tests); await its result."""
        loop = asyncio.get_running_loop()
        result = loop.create_future()

        def run() -> None:
            try:
                value = fn()
            except Exception as error:
                _call_soon(loop, _resolve_result, result, None, error)
            else:
                _call_soon(loop, _resolve_result, result, value, None)

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
                if not self.engine.has_unfinished():
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self._dispatch(self.engine.step())
        except BaseException as error:
            log.exception("engine loop died")
            self.error = error
            for stream in self._streams.values():
                _call_soon(stream.loop, stream.outputs.put_nowait, EngineDeadError(str(error)))
            self._streams.clear()
            for loop, died in self._death_watchers:
                _call_soon(loop, _resolve, died, error)

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

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        # One wake-up of each event loop a step, not one an output: every call_soon_threadsafe writes
        # to the loop's self-pipe, a syscall the engine thread pays between steps (64 chats: 64 a step).
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                stream.remaining -= 1
                if stream.remaining == 0:
                    del self._streams[output.request_id]
            deliveries.setdefault(stream.loop, []).append((stream.outputs, output))
        for loop, items in deliveries.items():
            _call_soon(loop, _deliver, items)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """Hand `callback` to `loop`; a loop that has closed (its server gone) must not stop the engine."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        log.warning("an event loop closed with requests still open; their outputs are dropped")


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for outputs, output in items:
        outputs.put_nowait(output)


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if not future.done():
        future.set_result(error)


def _resolve_result(future: asyncio.Future, value: object, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
