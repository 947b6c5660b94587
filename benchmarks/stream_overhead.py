"""The server's CPU per streamed token: what the event loop pays to deliver each token.

    python -m benchmarks.stream_overhead [--chats 64] [--output-tokens 256] [--rounds 3] [--profile DIR]
                                         [--engine-thread]

A tiny model (its forward costs almost nothing) streams `--chats` text chats at once, each
`--output-tokens` tokens long, after one uncounted round of the same. The script reads every
server thread's CPU time from Linux's /proc/<pid>/task/<tid>/schedstat before and after each
round and prints it per streamed token: the main thread (uvicorn's event loop: the SSE chunks,
the socket writes), the server process's other threads (the engine pipe's: the outputs' text and
their hand-over; preprocessing) and the engine core's process (`--engine-thread`: the engine
thread, counted with the other threads). The server runs torch on one thread (OMP_NUM_THREADS=1),
since OpenMP's workers spin between ops and that would count as CPU time. The server process's
threads share one GIL, so their sum per token bounds how many tokens a second it can stream,
whatever the GPU's speed; the core's, in a process of its own, bounds its steps.
`--profile DIR` records the server's threads with py-spy during the last round (a speedscope JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import httpx

from benchmarks.engine_bench import machine
from benchmarks.server_process import ServerProcess, record_profile
from monovl.model.tiny_weights import TinyShape
from monovl.preprocessing.tiny_checkpoint import bench_checkpoint


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time so far of every thread of the process, by thread id."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            times[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read
    return times


def question(k: int) -> str:
    return f"Question {k}: explain continuous batching."


async def one(client: httpx.AsyncClient, url: str, k: int, max_tokens: int) -> int:
    """One streamed chat of `max_tokens` tokens (ignore_eos); the completion tokens its usage reports."""
    body = {
        "messages": [{"role": "user", "content": question(k)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return tokens


async def drive(url: str, chats: int, max_tokens: int) -> int:
    """Completion tokens of `chats` streams at once."""
    limits = httpx.Limits(max_connections=chats + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tokens = await asyncio.gather(*(one(client, url, k, max_tokens) for k in range(chats)))
    return sum(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="record the server with py-spy during the last round")
    parser.add_argument("--engine-thread", action="store_true", help="the server's engine on a thread of its own")
    args = parser.parse_args()

    model = bench_checkpoint(TinyShape())
    flags = ["--max-num-seqs", str(args.chats), *(["--engine-thread"] if args.engine_thread else [])]
    server = ServerProcess(model, *flags, env={"OMP_NUM_THREADS": "1"})
    try:
        pid = server.process.pid
        core = server.engine_core_pid()
        asyncio.run(drive(server.url, args.chats, args.output_tokens))  # warm-up, not counted
        where = f"engine core pid {core}" if core is not None else "engine on a thread"
        print(f"{machine()}: {args.chats} chats x {args.output_tokens} tokens, tiny model, server pid {pid}, {where}")
        seconds = 0.0
        for round_ in range(args.rounds):
            recorder = None
            if args.profile and round_ == args.rounds - 1:
                recorder = record_profile(server, args.profile, max(seconds, 1.0))
            before, core_before = thread_cpu_ns(pid), thread_cpu_ns(core) if core is not None else {}
            started = time.perf_counter()
            tokens = asyncio.run(drive(server.url, args.chats, args.output_tokens))
            seconds = time.perf_counter() - started
            if recorder is not None:
                recorder.wait()
            after, core_after = thread_cpu_ns(pid), thread_cpu_ns(core) if core is not None else {}
            spent = {tid: after[tid] - before.get(tid, 0) for tid in after}
            loop_us = spent.get(pid, 0) / tokens / 1000
            rest_us = sum(v for tid, v in spent.items() if tid != pid) / tokens / 1000
            core_us = sum(core_after[tid] - core_before.get(tid, 0) for tid in core_after) / tokens / 1000
            print(
                f"{tokens} tokens in {seconds:.2f} s ({tokens / seconds:,.0f} tok/s); CPU per token: "
                f"event loop {loop_us:.1f} us, other server threads {rest_us:.1f} us, engine core {core_us:.1f} us"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
