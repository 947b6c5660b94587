"""What the HTTP server costs over its engine: the same chats, engine alone and through the server.

    python -m benchmarks.http_tax [--streams 1 16 64] [--output-tokens 128] [--rounds 3] [--profile DIR]
                                  [--neighbour-ms 1]

For each stream count, in one run on one machine: N text chats of --output-tokens tokens each
(ignore_eos, so every run decodes the same tokens) through an `LLMEngine` stepped in this process,
and through `monovl serve` (a fresh server, streaming over loopback with httpx; idle while the
engine runs). The two sides take turns, --rounds rounds each of new chats (new questions, so no
round hits the prefix cache of another), and each reports its median round. Prints output
tokens/s for both, the server's share of the engine's, and the server's concurrent throughput
against its own one-stream figure. `--profile DIR` records the server under py-spy (both threads,
`--idle` off) in the last round at the largest stream count and writes a speedscope JSON there.
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
from engine.llm_engine import EngineConfig, LLMEngine
from engine.sampling_params import SamplingParams
from preprocessing.chat_template import ChatMessage
from preprocessing.checkpoint import load_checkpoint
from preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args


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
    one = None
    for streams in args.streams:
        flags = ["--max-num-seqs", str(max(streams, 1)), "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        server = ServerProcess(directory, *flags, "--disable-log-stats", startup_s=300)
        alone = EngineAlone(directory, streams, args.output_tokens, args.max_num_batched_tokens)
        engine_rounds, server_rounds, neighboured = [], [], []
        try:
            for round_ in range(args.rounds):  # alternating, so both sides see the same drift of a shared machine
                chats = range(2 * round_ * streams, (2 * round_ + 1) * streams)
                engine_rounds.append(alone.round(chats))
                if args.neighbour_ms:
                    with Neighbour(args.neighbour_ms / 1000, 0.040):
                        neighboured.append(alone.round(range(10**6 + chats.start, 10**6 + chats.stop)))
                recorder = None
                if args.profile and streams == max(args.streams) and round_ == args.rounds - 1:
                    recorder = record_profile(
                        server, args.profile, streams * args.output_tokens / engine_rounds[-1] * 1.5
                    )
                chats = range((2 * round_ + 1) * streams, (2 * round_ + 2) * streams)
                server_rounds.append(asyncio.run(server_round(server.url, chats, args.output_tokens)))
                if recorder is not None:
                    recorder.wait()
        finally:
            server.stop()
            del alone
        engine_tps, served = median(engine_rounds), median(server_rounds)
        one = one or (served if streams == 1 else None)
        versus_one = f", {served / one:.2f}x the server's one stream" if one and streams > 1 else ""
        print(
            f"{streams:3d} streams: engine alone {engine_tps:7.1f} tok/s, server {served:7.1f} tok/s, "
            f"server/engine {served / engine_tps:.3f}{versus_one}"
        )
        print("    rounds, engine: " + " ".join(f"{t:.1f}" for t in engine_rounds)
              + "; server: " + " ".join(f"{t:.1f}" for t in server_rounds))  # fmt: skip
        if neighboured:
            beside = median(neighboured)
            print(
                f"    engine beside a Python thread busy {args.neighbour_ms:g} ms in 40: {beside:.1f} tok/s, "
                f"{beside / engine_tps:.3f} of alone (rounds " + " ".join(f"{t:.1f}" for t in neighboured) + ")"
            )


if __name__ == "__main__":
    main()
