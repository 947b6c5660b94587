"""The reliability figures of docs/reliability.md: hostile requests and concurrent streams with disconnects.

    python scripts/reliability_run.py [--hostile 500] [--streams 300] [--rounds 3]

Starts `monovl serve` on a tiny random checkpoint on a loopback port, sends the hostile requests
of tests/hostile.py (cycled, with variants) and counts 5xx answers and hangs, then runs rounds of
concurrent streaming chats where 30% of the clients leave mid-stream, checking every completed
answer against the same chat alone, KV usage after each round and the server's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server.tiny_checkpoint import make_tiny_checkpoint
from tests.hostile import hostile_requests
from tests.load import expected_answers, resident_kib, run_round
from tests.server_helpers import ServerProcess


def hostile_phase(server: ServerProcess, count: int) -> dict:
    cases = hostile_requests()
    statuses: dict[int, int] = {}
    hangs = slowest = 0.0
    with httpx.Client(timeout=30) as client:
        for k in range(count):
            _, body = cases[k % len(cases)]
            if isinstance(body, dict) and k >= len(cases):
                body = {**body, "user": f"variant-{k}"}  # same defect, a different request
            started = time.perf_counter()
            try:
                if isinstance(body, bytes):
                    response = client.post(f"{server.url}/v1/chat/completions", content=body)
                else:
                    response = client.post(f"{server.url}/v1/chat/completions", json=body)
            except httpx.TimeoutException:
                hangs += 1
                continue
            slowest = max(slowest, time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    healthy = httpx.get(f"{server.url}/health").status_code == 200
    return {
        "requests": count,
        "statuses": statuses,
        "5xx": sum(v for s, v in statuses.items() if s >= 500),
        "hangs": int(hangs),
        "slowest_s": round(slowest, 3),
        "healthy_after": healthy,
    }


def stream_phase(server: ServerProcess, streams: int, rounds: int) -> list[dict]:
    expected = expected_answers(server.url, 16)
    out = []
    for round_number in range(rounds):
        started = time.perf_counter()
        result = asyncio.run(run_round(server.url, expected, streams, 0.3, 16, seed=round_number))
        time.sleep(1.0)
        out.append({
            "round": round_number + 1, "streams": streams, "completed_intact": result.completed,
            "disconnected": result.disconnected, "wrong_answers": result.wrong_answers,
            "5xx": result.server_errors, "other_errors": len(result.other_errors),
            "kv_usage_after": server.metric("monovl:kv_cache_usage_perc"),
            "running_after": server.metric("monovl:num_requests_running"),
            "rss_mib": round(resident_kib(server.process.pid) / 1024, 1),
            "seconds": round(time.perf_counter() - started, 1),
        })  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostile", type=int, default=500)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        server = ServerProcess(checkpoint, "--max-queue", str(args.streams + 50), "--max-model-len", "4096")
        try:
            print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
            print("hostile:", json.dumps(hostile_phase(server, args.hostile)), flush=True)
            rounds = stream_phase(server, args.streams, args.rounds)
            first = rounds[0]["rss_mib"]
            print(
                f"memory after each round (MiB): {[r['rss_mib'] for r in rounds]}; "
                f"max growth after round 1: {max(r['rss_mib'] for r in rounds) / first - 1:+.1%}"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
