"""The isolation figures of docs/reliability.md ("One client against the others"): expensive
requests side by side with plain chats, against real servers.

    python -m tests.attack_run [--seconds 40] [--schemas 300] [--attacks NAME,...] [--phases NAME,...]

On the demo-sized tiny checkpoint, with the default flags but `--grammar-cache-memory` (small, so
the bound shows within a few minutes): for `--seconds`, at once and over and over, two new slow
schemas (2,000 optional properties: past the compile limit, `benchmarks.grammar_memory --large`),
the echo request of 4,000 prompt ids with logprobs 20 and n 128 (refused) and the largest echo the
limit lets through, a header of 8 MB, and eight 64-megapixel images through `/tokenize`;
meanwhile a short plain chat every half second, each timed. Resident memory of the server and its
children before, at the peak and after.
Then `--schemas` unique schemas one after another (the engine core's memory against the cache
limit), and SIGTERM to a server compiling a 100,000-item enum.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import socket
import threading
import time

import httpx

from benchmarks.engine_bench import machine
from benchmarks.server_process import ServerProcess
from monovl.preprocessing.tiny_checkpoint import ensure_demo_checkpoint
from tests.hostile import data_url, image_message
from tests.reliability_run import TRIM_WAIT_S, report
from tests.test_lanes import large_image

USER = [{"role": "user", "content": "hi"}]
CACHE_GIB = 0.1


def schema(tag: str, count: int, required: bool = False) -> dict:
    properties = {f"{tag}_{i}": {"type": "integer"} for i in range(count)}
    body = {"type": "object", "properties": properties, **({"required": list(properties)} if required else {})}
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": body}}


def slow_schemas(server: ServerProcess, round_: int) -> list[int]:
    def one(k: int) -> int:
        body = {"messages": USER, "max_tokens": 4, "response_format": schema(f"r{round_}k{k}", 2000)}
        return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code

    answers: list[int] = []
    threads = [threading.Thread(target=lambda k=k: answers.append(one(k))) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def echoes(server: ServerProcess, _: int) -> list[int]:
    bomb = {"prompt": [5 + i % 900 for i in range(4000)], "echo": True, "logprobs": 20, "n": 128, "max_tokens": 1}
    allowed = {**bomb, "n": 5}  # 4,000 x 21 x 5 = 420,000 prompt logprobs: under the 500,000 limit
    return [httpx.post(f"{server.url}/v1/completions", json=b, timeout=300).status_code for b in (bomb, allowed)]


def huge_header(server: ServerProcess, _: int) -> list[int]:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(128):  # 8 MB
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        sock.settimeout(10)
        return [int(sock.recv(4096).split()[1])]


@functools.cache
def large_image_url() -> str:
    return data_url(large_image())


def tokenize_images(server: ServerProcess, _: int) -> list[int]:
    body = {"messages": image_message(large_image_url())}
    answers: list[int] = []

    def one() -> None:
        answers.append(httpx.post(f"{server.url}/tokenize", json=body, timeout=300).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


ATTACKS = {a.__name__: a for a in (slow_schemas, echoes, huge_header, tokenize_images)}


def attack_phase(server: ServerProcess, seconds: float, attacks: list[str]) -> dict:
    large_image_url()
    start_mib = server.resident_mib()
    server.reset_peak()
    stop = threading.Event()
    answers: dict[str, dict[int, int]] = {}

    def keep_attacking(attack) -> None:
        tally = answers.setdefault(attack.__name__, {})
        round_ = 0
        while not stop.is_set():
            for status in attack(server, round_):
                tally[status] = tally.get(status, 0) + 1
            round_ += 1

    attackers = [threading.Thread(target=keep_attacking, args=(ATTACKS[name],)) for name in attacks]
    for attacker in attackers:
        attacker.start()
    chats, statuses = [], {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status = httpx.post(
            f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 8}, timeout=120
        ).status_code
        chats.append(time.perf_counter() - started)
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.5)
    stop.set()
    for attacker in attackers:
        attacker.join()
    peak_mib = server.resident_mib(peak=True)
    time.sleep(TRIM_WAIT_S)
    after_mib = server.resident_mib()
    return report(
        "attacks",
        {
            "plain_chats": len(chats),
            "plain_statuses": statuses,
            "plain_max_s": round(max(chats), 2),
            "plain_median_s": round(sorted(chats)[len(chats) // 2], 3),
            "attack_answers": answers,
            "resident_mib_start": round(start_mib),
            "resident_mib_peak": round(peak_mib),
            "resident_mib_after": round(after_mib),
            "after_over_start": round(after_mib / start_mib, 3),
        },
    )


def schema_cache_phase(server: ServerProcess, count: int, warm_up: int = 3) -> dict:
    """`count` unique schemas after `warm_up` others (the core's one-time costs paid first)."""
    core = server.engine_core_pid()
    statuses: dict[int, int] = {}
    for k in range(-warm_up, count):
        if k == 0:
            time.sleep(TRIM_WAIT_S)
            before = server.resident_mib_by_process()[core]
            started = time.perf_counter()
        body = {"messages": USER, "max_tokens": 2, "response_format": schema(f"cache{k}", 300, required=True)}
        status = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code
        statuses[status] = statuses.get(status, 0) + 1
    time.sleep(TRIM_WAIT_S)
    after = server.resident_mib_by_process()[core]
    return report(
        "schema cache",
        {
            "schemas": count,
            "statuses": statuses,
            "seconds": round(time.perf_counter() - started),
            "core_mib_before": round(before),
            "core_mib_after": round(after),
            "core_growth_mib": round(after - before),
            "cache_limit_mib": round(CACHE_GIB * 1024),
        },
    )


def sigterm_phase(checkpoint, grace: float = 5.0) -> dict:
    server = ServerProcess(checkpoint, "--grammar-compile-timeout", "300", "--graceful-timeout", str(grace))
    try:
        enum = {
            "type": "json_schema",
            "json_schema": {"name": "e", "schema": {"enum": [f"v{i}" for i in range(100_000)]}},
        }
        body = {"messages": USER, "max_tokens": 2, "response_format": enum}
        threading.Thread(
            target=lambda: httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600), daemon=True
        ).start()
        while not any(server.process_name(pid) == "grammar probe" for pid in server.processes()):
            time.sleep(0.1)
        time.sleep(5)  # compiling now
        sent = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        status = server.process.wait(timeout=grace + 60)
        return report(
            "sigterm",
            {"exit_status": status, "exit_s": round(time.perf_counter() - sent, 2), "graceful_timeout_s": grace},
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--schemas", type=int, default=300)
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="which attacks run at once")
    parser.add_argument("--phases", default="attacks,schemas,sigterm")
    args = parser.parse_args()
    phases = args.phases.split(",")
    print(f"machine: {machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    checkpoint, _ = ensure_demo_checkpoint()
    server = ServerProcess(checkpoint, "--grammar-cache-memory", str(CACHE_GIB))
    try:
        httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, timeout=120)
        if "attacks" in phases:
            attack_phase(server, args.seconds, args.attacks.split(","))
        if "schemas" in phases:
            schema_cache_phase(server, args.schemas)
    finally:
        server.stop()
    if "sigterm" in phases:
        sigterm_phase(checkpoint)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
