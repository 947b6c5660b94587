"""What the HTTP server costs over its engine: the same chats, engine alone and through the server.

    python -m benchmarks.http_tax [--streams 1 16 64] [--output-tokens 128] [--rounds 3] [--profile DIR]
                                  [--engine-thread] [--neighbour-ms 1]

For each stream count, in one run on one machine: N text chats of --output-tokens tokens each
(ignore_eos, so every run decodes the same tokens) through an `LLMEngine` stepped in this process,
and through `monovl serve` (a fresh server, its engine in a process of its own, streaming over
loopback with httpx; idle while the others run); `--engine-thread` adds a third side, a server
whose engine runs on a thread of its own process. The sides take turns, --rounds rounds each of
new chats (new questions, so no round hits the prefix cache of another), and each reports its
median round. Prints output tokens/s for each, each server's share of the engine's, and its
concurrent throughput against its own one-stream figure. `--profile DIR` records the server
under py-spy (its processes and threads, `--idle` off) in the last round at the largest stream
count and writes a speedscope JSON there.
`--neighbour-ms M` also runs each engine round beside a thread of pure Python busy M ms in every
40 (a stand-in for an event loop's work), to show what a little other work on the same cores
costs the engine alone. The shape flags (--hidden, --layers, ...) size the random checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from statistics import median

import httpx

from benchmarks.engine_bench import MID_SIZE, machine
from benchmarks.server_process import ServerProcess, record_profile
from benchmarks.stream_overhead import one, question
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.chat_template import ChatMessage
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args


class EngineAlone:
    """An `LLMEngine` stepped in this process, warmed up, for rounds of chats."""

    def __init__(self, directory: Path, streams: int, output_tokens: int, batched_tokens: int) -> None:
        loaded = load_checkpoint(str(directory), "auto", "auto")
        config = EngineConfig(kv_cache_memory=1.0, max_num_seqs=max(streams, 1), max_num_batched_tokens=batched_tokens)
        self.engine = LLMEngine(loaded.model, loaded.tokens, config)
        self.preprocessor = loaded.preprocessor
        self.params = SamplingParams(temperature=0, max_tokens=output_tokens, ignore_eos=True)
        warm = self.preprocessor.process([ChatMessage.text("user", "warm up")], [])
        self.engine.add_request("warm", warm, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        while self.engine.has_unfinished():
            self.engine.step()

    def round(self, chats: range) -> float:
        for k in chats:
            prompt = self.preprocessor.process([ChatMessage.text("user", question(k))], [])
            self.engine.add_request(str(k), prompt, self.params)
        tokens, started = 0, time.perf_counter()
        while self.engine.has_unfinished():
            tokens += sum(len(o.new_token_ids) for o in self.engine.step())
        return tokens / (time.perf_counter() - started)


class Neighbour:
    """A thread of this process that runs pure Python for `busy_s` out of every `period_s`: what the
    engine alone loses to a little other work on the same cores (an event loop's share, say)."""

    def __init__(self, busy_s: float, period_s: float) -> None:
        self.busy_s, self.period_s = busy_s, period_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            while time.perf_counter() - started < self.busy_s:
                pass
            time.sleep(self.period_s - self.busy_s)

    def __enter__(self) -> Neighbour:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


async def server_round(url: str, chats: range, output_tokens: int) -> float:
    limits = httpx.Limits(max_connections=len(chats) + 4)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await one(client, url, -1, 8)  # the connection pool and the server's first step warm
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(client, url, k, output_tokens) for k in chats))
        return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of new chats per side; the median is printed")
    parser.add_argument("--profile", type=Path, help="record the server with py-spy at the largest stream count")
    parser.add_argument("--engine-thread", action="store_true", help="also a server whose engine runs on a thread")
    parser.add_argument(
        "--neighbour-ms",
        type=float,
        default=0.0,
        help="also run each engine round beside a Python thread busy this many ms in every 40",
    )
    add_shape_args(parser, MID_SIZE)
    args = parser.parse_args()
    directory = bench_checkpoint(shape_from_args(args))
    print(f"machine: {machine()}; checkpoint {directory.name}; median of {args.rounds} rounds")
    kinds = {"engine process": []} | ({"engine thread": ["--engine-thread"]} if args.engine_thread else {})
    one: dict[str, float] = {}
    for streams in args.streams:
        flags = ["--max-num-seqs", str(max(streams, 1)), "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        servers = {
            kind: ServerProcess(directory, *flags, *extra, "--disable-log-stats", startup_s=300)
            for kind, extra in kinds.items()
        }
        alone = EngineAlone(directory, streams, args.output_tokens, args.max_num_batched_tokens)
        engine_rounds: list[float] = []
        server_rounds: dict[str, list[float]] = {kind: [] for kind in kinds}
        neighboured: list[float] = []
        fresh = iter(range(0, 10**9, streams))  # the first chat of each round's new questions
        try:
            for round_ in range(args.rounds):  # taking turns, so every side sees the same drift of a shared machine
                engine_rounds.append(alone.round(range(start := next(fresh), start + streams)))
                if args.neighbour_ms:
                    with Neighbour(args.neighbour_ms / 1000, 0.040):
                        neighboured.append(alone.round(range(start := next(fresh), start + streams)))
                for kind, server in servers.items():
                    recorder = None
                    if args.profile and streams == max(args.streams) and round_ == args.rounds - 1:
                        seconds = streams * args.output_tokens / engine_rounds[-1] * 1.5
                        recorder = record_profile(server, args.profile / kind.replace(" ", "-"), seconds)
                    chats = range(start := next(fresh), start + streams)
                    server_rounds[kind].append(asyncio.run(server_round(server.url, chats, args.output_tokens)))
                    if recorder is not None:
                        recorder.wait()
        finally:
            for server in servers.values():
                server.stop()
            del alone
        engine_tps = median(engine_rounds)
        print(f"{streams:3d} streams: engine alone {engine_tps:7.1f} tok/s (rounds {_rounds(engine_rounds)})")
        for kind, rounds in server_rounds.items():
            served = median(rounds)
            if streams == 1:
                one[kind] = served
            versus_one = f", {served / one[kind]:.2f}x its one stream" if kind in one and streams > 1 else ""
            print(
                f"    server, {kind}: {served:7.1f} tok/s (rounds {_rounds(rounds)}), "
                f"server/engine {served / engine_tps:.3f}{versus_one}"
            )
        if neighboured:
            beside = median(neighboured)
            print(
                f"    engine beside a Python thread busy {args.neighbour_ms:g} ms in 40: {beside:.1f} tok/s, "
                f"{beside / engine_tps:.3f} of alone (rounds {_rounds(neighboured)})"
            )


def _rounds(rounds: list[float]) -> str:
    return " ".join(f"{t:.1f}" for t in rounds)


if __name__ == "__main__":
    main()
