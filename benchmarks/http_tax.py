"""What the HTTP server costs over its engine: the same chats, engine alone and through the server.

    python -m benchmarks.http_tax [--streams 1 16 64] [--output-tokens 128] [--rounds 3] [--profile DIR]

For each stream count, in one run on one machine: N text chats of --output-tokens tokens each
(ignore_eos, so every run decodes the same tokens) through an `LLMEngine` stepped in this process,
then through `monovl serve` (a fresh server, streaming over loopback with httpx). Each side runs
--rounds rounds of new chats (new questions, so no round hits the prefix cache of another) and
reports the median round. Prints output tokens/s for both, the server's share of the engine's,
and the server's concurrent throughput against its own one-stream figure. `--profile DIR` records
the server under py-spy (both threads, `--idle` off) for the largest stream count and writes a
speedscope JSON there. The shape flags (--hidden, --layers, ...) size the random checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from benchmarks.engine_bench import MID_SIZE, machine
from benchmarks.server_process import ServerProcess
from benchmarks.stream_overhead import one, question
from engine.llm_engine import EngineConfig, LLMEngine
from engine.sampling_params import SamplingParams
from preprocessing.chat_template import ChatMessage
from preprocessing.checkpoint import load_checkpoint
from preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def engine_alone(directory: Path, streams: int, output_tokens: int, batched_tokens: int, rounds: int) -> float:
    loaded = load_checkpoint(str(directory), "auto", "auto")
    config = EngineConfig(kv_cache_memory=1.0, max_num_seqs=max(streams, 1), max_num_batched_tokens=batched_tokens)
    engine = LLMEngine(loaded.model, loaded.tokens, config)
    pre = loaded.preprocessor
    params = SamplingParams(temperature=0, max_tokens=output_tokens, ignore_eos=True)
    warm = pre.process([ChatMessage.text("user", "warm up")], [])
    engine.add_request("warm", warm, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    throughputs = []
    for round_ in range(rounds):
        for k in range(round_ * streams, (round_ + 1) * streams):
            engine.add_request(str(k), pre.process([ChatMessage.text("user", question(k))], []), params)
        tokens, started = 0, time.perf_counter()
        while engine.has_unfinished():
            tokens += sum(len(o.new_token_ids) for o in engine.step())
        throughputs.append(tokens / (time.perf_counter() - started))
    return median(throughputs)


async def through_server(url: str, streams: int, output_tokens: int, rounds: int) -> float:
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await one(client, url, -1, 8)  # warm up
        throughputs = []
        for round_ in range(rounds):
            started = time.perf_counter()
            chats = range(round_ * streams, (round_ + 1) * streams)
            counts = await asyncio.gather(*(one(client, url, k, output_tokens) for k in chats))
            throughputs.append(sum(counts) / (time.perf_counter() - started))
        return median(throughputs)


def profiled(server: ServerProcess, out: Path, seconds: float) -> subprocess.Popen | None:
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy): no profile")
        return None
    out.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--pid", str(server.process.pid), "--threads", "--format", "speedscope"]
    command += ["--duration", str(int(seconds) + 1), "--output", str(out / "server.speedscope.json")]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of new chats per side; the median is printed")
    parser.add_argument("--profile", type=Path, help="record the server with py-spy at the largest stream count")
    add_shape_args(parser, MID_SIZE)
    args = parser.parse_args()
    directory = bench_checkpoint(shape_from_args(args))
    print(f"machine: {machine()}; checkpoint {directory.name}; median of {args.rounds} rounds")
    one = None
    for streams in args.streams:
        alone = engine_alone(directory, streams, args.output_tokens, args.max_num_batched_tokens, args.rounds)
        flags = ["--max-num-seqs", str(max(streams, 1)), "--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        server = ServerProcess(directory, *flags, "--disable-log-stats", startup_s=300)
        try:
            recorder = None
            if args.profile and streams == max(args.streams):
                seconds = args.rounds * streams * args.output_tokens / max(alone, 1) * 1.5
                recorder = profiled(server, args.profile, seconds)
            served = asyncio.run(through_server(server.url, streams, args.output_tokens, args.rounds))
            if recorder is not None:
                recorder.wait()
        finally:
            server.stop()
        one = one or (served if streams == 1 else None)
        versus_one = f", {served / one:.2f}x the server's one stream" if one and streams > 1 else ""
        print(
            f"{streams:3d} streams: engine alone {alone:7.1f} tok/s, server {served:7.1f} tok/s, "
            f"server/engine {served / alone:.3f}{versus_one}"
        )


if __name__ == "__main__":
    main()
