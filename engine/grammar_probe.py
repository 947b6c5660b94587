"""A process that tries a grammar's compile and is killed when it runs past its time limit.

xgrammar's compile cannot be interrupted, and a small spec (a long enum, an object of many optional
properties) can compile for longer than any request should wait, in hundreds of MB
(`python -m benchmarks.grammar_memory --large` times some; docs/reliability.md has the figures).
The compiled grammar has to live in the engine's process (its serialized form is larger than it is
in memory, and slower to read than to compile), so a new spec is compiled here first: if it compiles
within the limit, the engine compiles it again, knowing the cost is bounded; if not, this process is
killed and the spec refused. It runs at a lower CPU priority than the serving processes, dies with
its parent, and talks over its stdin and stdout (pickles; anything the compiler prints goes to
stderr).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from monovl.engine.heap import HeapTrimmer
from monovl.engine.structured_output import GrammarError, Grammars, GrammarTooComplex, StructuredOutput, Vocabulary

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
_NICENESS = 10
PROBE_START_TIMEOUT_S = 60.0  # python, torch and xgrammar imported and the vocabulary read


class ProbeUnavailable(RuntimeError):
    """The probe process did not start: the server's fault, not the spec's."""

    code = "grammar_compiler_unavailable"


class GrammarProbe:
    """One probe process, started on first use and again after it was killed. One caller at a time."""

    command: tuple[str, ...] = (sys.executable, "-m", "monovl.engine.grammar_probe")

    def __init__(
        self, vocabulary: Vocabulary, any_whitespace: bool, start_timeout: float = PROBE_START_TIMEOUT_S
    ) -> None:
        self.vocabulary = vocabulary
        self.any_whitespace = any_whitespace
        self.start_timeout = start_timeout
        self._process: subprocess.Popen | None = None

    def check(self, spec: StructuredOutput, timeout: float) -> None:
        """Return if `spec` compiles within `timeout` seconds; GrammarError (GrammarTooComplex past the
        limit) if not. The process's start-up is not counted against the limit."""
        process = self._started()
        try:
            _send(process.stdin, spec)
            if not _readable(process.stdout, timeout):
                self.stop()
                raise GrammarTooComplex(
                    f"the {spec.kind} constraint is too complex: it did not compile within {timeout:g} s "
                    "(the server's --grammar-compile-timeout)"
                )
            error = pickle.load(process.stdout)
        except (OSError, EOFError, pickle.UnpicklingError):
            self.stop()
            raise GrammarError(f"cannot compile the {spec.kind} constraint: the compiler process failed") from None
        if error is not None:
            raise GrammarError(error)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def _started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self.stop()
        path = os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")]))
        process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        self._process = process
        try:
            _send(process.stdin, (self.vocabulary, self.any_whitespace))
            if not _readable(process.stdout, self.start_timeout) or pickle.load(process.stdout) != "ready":
                raise OSError("no answer")
        except (OSError, EOFError, pickle.UnpicklingError):
            self.stop()
            raise ProbeUnavailable("cannot compile constraints now: the compiler process did not start") from None
        return process


def _send(stream: BinaryIO, message: object) -> None:
    stream.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    stream.flush()


def _readable(stream: BinaryIO, timeout: float) -> bool:
    return bool(select.select([stream], [], [], timeout)[0])


def _exit_when_orphaned(parent: int) -> None:
    """A compile in flight does not read its pipe, so the parent's end closing is not enough."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    """The probe process: a vocabulary, then one spec at a time, each answered None or the error's text."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the compiler's own prints must not reach the answers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process stops it
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    with contextlib.suppress(OSError):
        os.nice(_NICENESS)
    requests = sys.stdin.buffer
    vocabulary, any_whitespace = pickle.load(requests)
    grammars = Grammars(vocabulary, any_whitespace, cache_bytes=0)
    grammars.compiler(json=True)
    grammars.compiler(json=False)
    _send(answers, "ready")
    heap = HeapTrimmer(interval=0.0)
    while True:
        try:
            spec = pickle.load(requests)
        except EOFError:
            return
        try:
            grammars.compile(spec)
        except GrammarError as error:
            _send(answers, str(error))
        else:
            _send(answers, None)
        heap.trim_if_due()  # a large grammar's memory goes back before the next


if __name__ == "__main__":
    main()
