"""Run `monovl serve` as a child process on a free loopback port and wait until it is healthy.

The benchmarks measure servers started this way, and the server tests start theirs with it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        model: Path | None,
        *args: str,
        env: dict | None = None,
        startup_s: float = 60,
        module: str = "monovl.server.cli",  # another module may run the same command (tests.fault_injection does)
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        if model is not None:
            cmd += ["--model", str(model)]
        # A file, not a pipe: nobody reads the log while the server runs, and a full pipe would block it.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the server)
        self.process = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        deadline = time.time() + startup_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become healthy")

    def metric(self, name: str, label: str = "") -> float:
        """Sum of the samples of `name` whose labels contain `label`."""
        text = httpx.get(f"{self.url}/metrics").text
        samples = [line for line in text.splitlines() if line.startswith(name + "{") and label in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in samples)

    def processes(self) -> list[int]:
        """The server's process and its descendants (the engine core's process and its grammar probe among them)."""
        found, index = [self.process.pid], 0
        while index < len(found):
            pid = found[index]
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for task in os.listdir(f"/proc/{pid}/task") for c in _children(pid, task)]
            index += 1
        return found

    def process_name(self, pid: int) -> str:
        """ "server", "engine core", "grammar probe" or "resource tracker" (multiprocessing's), for one of
        `processes()`."""
        if pid == self.process.pid:
            return "server"
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"resource_tracker" in command:
            return "resource tracker"
        return "grammar probe" if b"engine.grammar_probe" in command else "engine core"

    def engine_core_pid(self) -> int | None:
        """The engine core's process; None with `--engine-thread`."""
        return next((pid for pid in self.processes() if self.process_name(pid) == "engine core"), None)

    def resident_mib(self, peak: bool = False) -> float:
        """The resident memory of the server and its children now, or the sum of their peaks since `reset_peak`."""
        return sum(self.resident_mib_by_process(peak).values())

    def resident_mib_by_process(self, peak: bool = False) -> dict[int, float]:
        key = "VmHWM:" if peak else "VmRSS:"
        resident = {}
        for pid in self.processes():
            with contextlib.suppress(FileNotFoundError, StopIteration), open(f"/proc/{pid}/status") as status:
                resident[pid] = next(int(line.split()[1]) for line in status if line.startswith(key)) / 1024
        return resident

    def reset_peak(self) -> None:
        for pid in self.processes():
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.output()


def record_profile(server: ServerProcess, out: Path, seconds: float) -> subprocess.Popen | None:
    """py-spy recording the server's threads and its engine process's for `seconds` into
    out/server.speedscope.json (wait on it)."""
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy): no profile")
        return None
    out.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--pid", str(server.process.pid), "--threads", "--subprocesses"]
    command += ["--format", "speedscope"]
    command += ["--duration", str(int(seconds) + 1), "--output", str(out / "server.speedscope.json")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _children(pid: int, task: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{task}/children").read_text().split()
    except FileNotFoundError:  # a thread that ended
        return []
