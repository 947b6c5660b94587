"""The reliability figures of docs/reliability.md: hostile requests and clients, against real servers.

    python -m tests.reliability_run [--hostile 500] [--streams 300] [--rounds 3] [--leavers 200]

On a tiny random checkpoint (loopback port, a 4,096-token context), in order: warm-up; the hostile
requests of tests/hostile.py (cycled, with variants), /health after each; a 100 MiB chunked body
and a 50 MB text; `--leavers` streams that queue behind the 64 running ones and leave; 50 slow
header senders; rounds of streaming chats where 30% of the clients leave mid-stream, each answer
checked against the same chat alone; 40 image chats of distinct sizes; resident memory against
the warm-up's. Then, each on a server of its own: a short chat beside a 12k-token prompt on a
mid-size checkpoint, SIGTERM during streams, and a device that fails mid-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.server_process import ServerProcess
from monovl.model.tiny_weights import TinyShape
from monovl.preprocessing.tiny_checkpoint import bench_checkpoint, make_tiny_checkpoint
from tests.conftest import png_bytes
from tests.hostile import data_url, hostile_requests, hundred_mib, image_message
from tests.load import expected_answers, run_round, stream_events
from tests.server_helpers import JSON, closed_by_server, raw_request

USER = [{"role": "user", "content": "hi"}]
TRIM_WAIT_S = 6.0  # the server hands freed memory back every 5 s


def report(name: str, figures: dict) -> dict:
    print(f"{name}: {json.dumps(figures)}", flush=True)
    return figures


def chat(server: ServerProcess, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=timeout)


def hostile_phase(server: ServerProcess, count: int) -> dict:
    cases = hostile_requests()
    statuses: dict[int, int] = {}
    hangs, slowest, unhealthy = 0, 0.0, 0
    with httpx.Client(timeout=30) as client:
        for k in range(count):
            _, body = cases[k % len(cases)]
            if isinstance(body, dict) and k >= len(cases):
                body = {**body, "user": f"variant-{k}"}  # same defect, a different request
            started = time.perf_counter()
            try:
                url = f"{server.url}/v1/chat/completions"
                raw = isinstance(body, bytes)
                response = client.post(url, content=body, headers=JSON) if raw else client.post(url, json=body)
            except httpx.TimeoutException:
                hangs += 1
                continue
            slowest = max(slowest, time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            unhealthy += client.get(f"{server.url}/health").status_code != 200
    fives = sum(v for s, v in statuses.items() if s >= 500)
    figures = {"requests": count, "statuses": statuses, "5xx": fives, "hangs": hangs, "slowest_s": round(slowest, 3)}
    return report("hostile", {**figures, "unhealthy_after_a_case": unhealthy})


def bodies_phase(server: ServerProcess) -> dict:
    server.reset_peak()
    idle = server.resident_mib()
    started = time.perf_counter()
    try:
        status = chat_raw(server, hundred_mib())
    except httpx.TransportError:
        status = "closed after its 413"
    chunked = {"status": status, "seconds": round(time.perf_counter() - started, 2)}
    chunked["peak_rss_over_idle_mib"] = round(server.resident_mib(peak=True) - idle, 1)
    text = json.dumps({"messages": [{"role": "user", "content": "word " * 10_000_000}]})
    started = time.perf_counter()
    huge_text = {"status": chat_raw(server, text.encode()), "seconds": round(time.perf_counter() - started, 2)}
    return report("bodies", {"chunked_100_mib": chunked, "text_50_mb": huge_text})


def chat_raw(server: ServerProcess, content) -> int:
    return httpx.post(f"{server.url}/v1/chat/completions", content=content, headers=JSON, timeout=120).status_code


def wait_for(condition, timeout: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if condition():
            return round(time.perf_counter() - started, 2)
        time.sleep(0.05)
    return None


def leavers_phase(server: ServerProcess, count: int) -> dict:
    body = {"messages": USER, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    socks = [raw_request(server, {**body, "user": f"leaver-{k}"}) for k in range(count)]
    queued = wait_for(lambda: server.metric("monovl:num_requests_waiting") == count - 64, 30)
    held = {"running": server.metric("monovl:num_requests_running"),
            "waiting": server.metric("monovl:num_requests_waiting")}  # fmt: skip
    for sock in socks:
        sock.close()
    busy = lambda: server.metric("monovl:num_requests_running") + server.metric("monovl:num_requests_waiting")  # noqa: E731
    gone = wait_for(lambda: busy() == 0, 30)
    started = time.perf_counter()
    status = chat(server, {"messages": USER, "max_tokens": 8}).status_code
    figures = {"streams": count, "queued_in_s": queued, "held": held, "all_gone_s": gone,
               "kv_usage_after": server.metric("monovl:kv_cache_usage_perc"),
               "next_chat": {"status": status, "seconds": round(time.perf_counter() - started, 3)}}  # fmt: skip
    return report("leavers", figures)


def slow_clients_phase(server: ServerProcess, count: int) -> dict:
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    for sock in slow:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.01)
    started = time.perf_counter()
    served = chat(server, {"messages": USER, "max_tokens": 8}).status_code
    served_s = round(time.perf_counter() - started, 3)
    still_open = set(range(count))
    while still_open and time.perf_counter() - started < 60:
        still_open -= {k for k in still_open if closed_by_server(slow[k])}
        time.sleep(0.2)
    closed_s = round(time.perf_counter() - started, 1)
    for sock in slow:
        sock.close()
    figures = {"connections": count, "chat_meanwhile": {"status": served, "seconds": served_s},
               "closed_by_server": count - len(still_open), "all_closed_s": closed_s}  # fmt: skip
    return report("slow_headers", figures)


def stream_phase(server: ServerProcess, streams: int, rounds: int) -> list[dict]:
    expected = expected_answers(server.url, 16)
    out = []
    for round_number in range(rounds):
        started = time.perf_counter()
        result = asyncio.run(run_round(server.url, expected, streams, 0.3, 16, seed=round_number))
        time.sleep(1.0)
        out.append(report("streams", {
            "round": round_number + 1, "streams": streams, "completed_intact": result.completed,
            "disconnected": result.disconnected, "wrong_answers": result.wrong_answers,
            "5xx": result.server_errors, "other_errors": len(result.other_errors),
            "kv_usage_after": server.metric("monovl:kv_cache_usage_perc"),
            "running_after": server.metric("monovl:num_requests_running"),
            "rss_mib": round(server.resident_mib(), 1), "seconds": round(time.perf_counter() - started, 1),
        }))  # fmt: skip
    return out


def image_chats(server: ServerProcess, count: int, first_seed: int) -> int:
    ok = 0
    for k in range(count):
        url = data_url(png_bytes(900 + 37 * k, 700 + 23 * k, seed=first_seed + k))
        ok += chat(server, {"messages": image_message(url), "max_tokens": 8}).status_code == 200
    return ok


def _short_chat(server: ServerProcess) -> tuple[float, float]:
    """(time to first token, total) of a short streamed chat."""
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16,
            "ignore_eos": True, "temperature": 0, "stream": True}  # fmt: skip
    started, first = time.perf_counter(), None
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if first is None and '"content":"' in line.replace('"content":""', ""):
                first = time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started


def fairness_phase(shape: TinyShape, trials: int = 5) -> dict:
    server = ServerProcess(bench_checkpoint(shape))
    try:
        _short_chat(server)
        alone = [_short_chat(server) for _ in range(3)]
        long_body = {"messages": [{"role": "user", "content": "story " * 12000}], "max_tokens": 2, "stream": True}
        sock = raw_request(server, long_body)
        sock.settimeout(900)
        sock.recv(4096)  # the role chunk: the long prompt is prefilling
        prefilled: list[float] = []
        started = time.perf_counter()
        reader = threading.Thread(target=_await_first_token, args=(sock, prefilled, started))
        reader.start()
        time.sleep(1.0)
        beside = [_short_chat(server) for _ in range(trials)]
        reader.join()
        sock.close()
    finally:
        server.stop()
    ttft, total = (statistics.median(a[i] for a in alone) for i in (0, 1))
    figures = {
        "shape": vars(shape), "prompt_tokens": "12k",
        "alone_ttft_s": round(ttft, 3), "alone_total_s": round(total, 3),
        "beside_ttft_s": [round(b[0], 3) for b in beside], "beside_total_s": [round(b[1], 3) for b in beside],
        "worst_ratio_ttft": round(max(b[0] for b in beside) / ttft, 1),
        "worst_ratio_total": round(max(b[1] for b in beside) / total, 1),
        "long_prompt_first_token_s": round(prefilled[0], 1) if prefilled else None,
    }  # fmt: skip
    return report("fairness", figures)


def _await_first_token(sock: socket.socket, arrived: list[float], started: float) -> None:
    received = b""
    while b'"content":"' not in received.replace(b'"content":""', b""):
        chunk = sock.recv(65536)
        if not chunk:
            return
        received += chunk
    arrived.append(time.perf_counter() - started)


def _open_streams(process: ServerProcess, count: int, then) -> list[list[str]]:
    body = {"messages": USER, "max_tokens": 60000, "ignore_eos": True, "stream": True}

    async def main():
        started = [asyncio.Event() for _ in range(count)]
        url = f"{process.url}/v1/chat/completions"
        streams = [asyncio.create_task(stream_events(url, body, event, timeout=120)) for event in started]
        for event in started:
            await event.wait()
        then()
        return await asyncio.gather(*streams)

    return asyncio.run(main())


def _final_error_code(events: list[str]) -> str | None:
    if len(events) < 2 or events[-1] != "[DONE]":
        return None
    return json.loads(events[-2]).get("error", {}).get("code")


def shutdown_phase(checkpoint: Path, streams: int = 8, grace: float = 5.0) -> dict:
    process = ServerProcess(checkpoint, "--graceful-timeout", str(grace))
    sent: list[float] = []
    try:

        def terminate() -> None:
            sent.append(time.perf_counter())
            process.process.send_signal(signal.SIGTERM)

        results = _open_streams(process, streams, terminate)
        ended = time.perf_counter() - sent[0]
        status = process.process.wait(timeout=30)
    finally:
        process.stop()
    codes = [_final_error_code(events) for events in results]
    final_events = {code: codes.count(code) for code in set(codes)}
    figures = {"streams": streams, "graceful_timeout_s": grace, "streams_ended_s": round(ended, 2)}
    return report("sigterm", {**figures, "final_events": final_events, "exit_status": status})


def dead_device_phase(checkpoint: Path, work: Path, streams: int = 4) -> dict:
    trigger = work / "fail-now"
    env = {"MONOVL_FAULT_TRIGGER": str(trigger), "MONOVL_FAULT": "lost"}
    process = ServerProcess(checkpoint, env=env, module="tests.fault_injection")
    try:
        started = time.perf_counter()
        results = _open_streams(process, streams, trigger.touch)
        status = process.process.wait(timeout=30)
        took = time.perf_counter() - started
    finally:
        process.stop()
    codes = [_final_error_code(events) for events in results]
    return report("dead_device", {"streams": streams, "final_events": {c: codes.count(c) for c in set(codes)},
                                  "exit_status": status, "exited_after_s": round(took, 2)})  # fmt: skip


def _by_process(server: ServerProcess, resident: dict[int, float]) -> dict[str, float]:
    """MiB by what each process runs."""
    return {server.process_name(pid): round(mib, 1) for pid, mib in resident.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hostile", type=int, default=500)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--leavers", type=int, default=200)
    parser.add_argument("--slow-clients", type=int, default=50)
    parser.add_argument("--fair-hidden", type=int, default=512, help="the mid-size checkpoint of the fairness case")
    parser.add_argument("--fair-layers", type=int, default=8)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        # tests/hostile.py's context cases are written for a 4,096-token context
        queue = str(max(args.streams, args.leavers) + 50)
        server = ServerProcess(checkpoint, "--max-queue", queue, "--max-model-len", "4096")
        try:
            chat(server, {"messages": USER, "max_tokens": 8})
            image_chats(server, 3, first_seed=1000)
            time.sleep(TRIM_WAIT_S)
            warm, warm_each = server.resident_mib(), server.resident_mib_by_process()
            report("warm_up", {"rss_mib": round(warm, 1), "by_process": _by_process(server, warm_each)})
            hostile_phase(server, args.hostile)
            bodies_phase(server)
            leavers_phase(server, args.leavers)
            slow_clients_phase(server, args.slow_clients)
            stream_phase(server, args.streams, args.rounds)
            served = image_chats(server, 40, first_seed=0)
            time.sleep(TRIM_WAIT_S)
            after, after_each = server.resident_mib(), server.resident_mib_by_process()
            growth = f"{after / warm - 1:+.1%}"
            report("memory", {"image_chats_served": served, "warm_mib": round(warm, 1), "after_mib": round(after, 1),
                              "growth": growth, "by_process": _by_process(server, after_each)})  # fmt: skip
        finally:
            server.stop()
        hidden, layers = args.fair_hidden, args.fair_layers
        fairness_phase(TinyShape(hidden=hidden, layers=layers, heads=8, kv_heads=4, intermediate=4 * hidden))
        shutdown_phase(checkpoint)
        dead_device_phase(checkpoint, Path(tmp))


if __name__ == "__main__":
    main()
