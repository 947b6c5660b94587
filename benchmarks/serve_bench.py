"""Serving benchmark over HTTP: TTFT, inter-token and end-to-end latency, throughput, against a baseline.

    python -m benchmarks.serve_bench [--model DIR] [--requests 64] [--concurrency 1 8 32] [--output-tokens 64]
    python -m benchmarks.serve_bench --request-rate 0.5 2 inf ...   (Poisson arrivals instead)
    python -m benchmarks.serve_bench --url http://host:8000 --baseline-url http://host:8001 ...

With --url the servers' caches carry over from one level to the next (and from earlier runs).

A workload of text chats, image chats of 1 to 13 tiles and follow-up turns on the same images is
sent at each fixed concurrency (or mean request rate), streaming, to our server and to a baseline:
the same model served one request at a time with no prefix or vision cache (`--max-num-seqs 1
--no-prefix-caching --vision-cache-memory 0`). With `--model` both servers are started here, one
after the other. Prints a table with every figure's ratio to the baseline ("base alone" is the
baseline's image TTFT at the first level: give the lowest concurrency or rate first); writes JSON
and a PNG plot of latency against throughput per level (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.engine_bench import MID_SIZE, machine
from benchmarks.server_process import ServerProcess
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args

TILE_SIZES = [(300, 300), (900, 420), (1300, 440), (900, 900), (1300, 900), (1800, 900), (1800, 1350)]  # 1..13 tiles


@dataclass
class Sample:
    kind: str
    ttft: float
    itl: float | None
    e2e: float
    output_tokens: int


def png(width: int, height: int, seed: int) -> str:
    """A data URL of a blocky random image of that size."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def workload(count: int, seed: int = 0) -> list[tuple[str, list[dict]]]:
    rng = random.Random(seed)
    images = [png(w, h, k) for k, (w, h) in enumerate(TILE_SIZES)]
    chats = []
    for k in range(count):
        roll = rng.random()
        if roll < 0.4:
            chats.append(("text", [{"role": "user", "content": f"Question {k}: explain continuous batching."}]))
            continue
        image = {"type": "image_url", "image_url": {"url": rng.choice(images)}}
        first = {"role": "user", "content": [image, {"type": "text", "text": "Describe the image."}]}
        if roll < 0.8:
            chats.append(("image", [first]))
        else:
            follow = [first, {"role": "assistant", "content": "It shows noise."}, {"role": "user", "content": "More?"}]
            chats.append(("follow-up", follow))
    return chats


async def one(client: httpx.AsyncClient, url: str, kind: str, messages: list[dict], max_tokens: int) -> Sample:
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    arrivals, tokens = [], 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c["delta"].get("content") for c in chunk.get("choices", [])):
                arrivals.append(time.perf_counter())
    e2e = time.perf_counter() - started
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    ttft = (arrivals[0] if arrivals else time.perf_counter()) - started
    return Sample(kind, ttft, statistics.fmean(gaps) if gaps else None, e2e, tokens)


@dataclass(frozen=True)
class Level:
    """A fixed number of requests in flight, or arrivals at a mean rate (a Poisson process, as vLLM's
    benchmark; `inf` sends all at once), with no cap on how many are in flight."""

    concurrency: int | None = None
    rate: float | None = None

    def __str__(self) -> str:
        return f"c{self.concurrency}" if self.concurrency is not None else f"r{self.rate:g}"


async def run_level(url: str, chats, level: Level, max_tokens: int) -> dict:
    gate = asyncio.Semaphore(level.concurrency or len(chats))
    rng = random.Random(0)
    delays = list(itertools.accumulate(
        0.0 if level.rate in (None, float("inf")) else rng.expovariate(level.rate) for _ in chats
    ))  # fmt: skip

    async def limited(client, delay, kind, messages):
        await asyncio.sleep(delay)
        async with gate:
            return await one(client, url, kind, messages, max_tokens)

    started = time.perf_counter()
    connections = (level.concurrency or len(chats)) + 4
    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=connections)) as client:
        samples = await asyncio.gather(
            *(limited(client, delay, kind, messages) for delay, (kind, messages) in zip(delays, chats, strict=True))
        )
    elapsed = time.perf_counter() - started
    return summarize(samples, elapsed, level)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(samples: list[Sample], elapsed: float, level: Level) -> dict:
    ttft = [s.ttft for s in samples]
    itl = [s.itl for s in samples if s.itl is not None]
    e2e = [s.e2e for s in samples]
    image_ttft = [s.ttft for s in samples if s.kind == "image"]
    out = {"level": str(level), "concurrency": level.concurrency, "request_rate": level.rate,
           "requests": len(samples), "seconds": elapsed,
           "request_throughput": len(samples) / elapsed,
           "output_token_throughput": sum(s.output_tokens for s in samples) / elapsed,
           "image_ttft_p50": pct(image_ttft, 50)}  # fmt: skip
    for name, values in (("ttft", ttft), ("itl", itl), ("e2e", e2e)):
        for q in (50, 90, 99):
            out[f"{name}_p{q}"] = pct(values, q)
    return out


def measure(url: str | None, server_args: list[str], model: Path | None, chats, levels, max_tokens) -> list[dict]:
    """Each level on a fresh server when we start it: the same chats again would find every prompt
    and image in the prefix and vision caches of the level before. A given --url keeps its caches."""
    results = []
    for level in levels:
        # a real-size checkpoint loads and captures its CUDA graphs before it answers /health
        server = None if url else ServerProcess(model, *server_args, startup_s=600)
        try:
            results.append(asyncio.run(run_level(url or server.url, chats, level, max_tokens)))
        finally:
            if server:
                server.stop()
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[-1].items()}), flush=True)
    return results


def plot(ours: list[dict], baseline: list[dict], path: Path, dtype: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in (("monovl", ours), ("one at a time", baseline)):
        x = [r["output_token_throughput"] for r in rows]
        for axis, key in zip(axes, ("ttft_p50", "itl_p50"), strict=True):
            axis.plot(x, [r[key] for r in rows], marker="o", label=label)
            for r in rows:
                axis.annotate(r["level"], (r["output_token_throughput"], r[key]))
    for axis, title in zip(axes, ("TTFT p50 (s)", "inter-token latency p50 (s)"), strict=True):
        axis.set_xlabel("output tokens/s")
        axis.set_title(title)
        axis.legend()
    fig.suptitle(f"monovl serving, {machine()}, dtype {dtype}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(ours: list[dict], baseline: list[dict]) -> None:
    print(
        f"{'level':>5} {'tok/s':>8} {'x base':>7} {'TTFT p50':>9} {'x base':>7} {'ITL p50':>8} {'E2E p50':>8} "
        f"{'img TTFT p50':>12} {'base alone':>10}"
    )
    alone = baseline[0]["image_ttft_p50"]
    for o, b in zip(ours, baseline, strict=True):
        print(
            f"{o['level']:>5} {o['output_token_throughput']:8.1f} "
            f"{o['output_token_throughput'] / b['output_token_throughput']:6.2f}x {o['ttft_p50']:9.3f} "
            f"{b['ttft_p50'] / o['ttft_p50']:6.2f}x {o['itl_p50']:8.4f} {o['e2e_p50']:8.2f} "
            f"{o['image_ttft_p50']:12.3f} {alone:10.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint to serve (default: a random one of the shape flags' size)")
    parser.add_argument("--url", help="an already running server (then --baseline-url too)")
    parser.add_argument("--baseline-url")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--request-rate", type=float, nargs="+", help="instead, mean arrivals per second (inf: all at once)"
    )
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("serve_bench"))
    parser.add_argument("--skip-baseline", action="store_true", help="measure our server only (no ratios)")
    parser.add_argument("--dtype", default="auto", help="both servers' --dtype (auto: float32 on the CPU)")
    add_shape_args(parser, MID_SIZE)
    args = parser.parse_args()
    model = None if args.url else (Path(args.model) if args.model else bench_checkpoint(shape_from_args(args)))
    chats = workload(args.requests)
    if args.request_rate:
        levels = [Level(rate=rate) for rate in args.request_rate]
    else:
        levels = [Level(concurrency=c) for c in args.concurrency]
    max_seqs = max(args.concurrency) if not args.request_rate else args.requests
    print(f"machine: {machine()}; {len(chats)} chats, {args.output_tokens} output tokens each; dtype {args.dtype}")
    common = ["--max-queue", "10000", "--dtype", args.dtype]
    print("monovl:")
    ours = measure(
        args.url,
        ["--max-num-seqs", str(max_seqs), *common],
        model,
        chats,
        levels,
        args.output_tokens,
    )
    baseline = []
    if not args.skip_baseline:
        print("baseline (one at a time, no caches):")
        baseline = measure(
            args.baseline_url,
            ["--max-num-seqs", "1", "--no-prefix-caching", "--vision-cache-memory", "0", *common],
            model,
            chats,
            levels,
            args.output_tokens,
        )
        print_table(ours, baseline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "dtype": args.dtype, "requests": len(chats), "output_tokens": args.output_tokens,
              "monovl": ours, "baseline": baseline}  # fmt: skip
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=2))
    plot(ours, baseline, Path(f"{args.out}.png"), args.dtype)
    print(f"wrote {args.out}.json and {args.out}.png")


if __name__ == "__main__":
    main()
