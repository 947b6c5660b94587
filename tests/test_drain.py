"""SIGTERM drains without losing a request: still serving during `--drain-delay` while /health
answers 503, then refusing new work with a retryable 503 while the port stays open, and exiting
cleanly once the open streams have finished."""

import json
import signal
import threading
import time

import httpx
import pytest

from benchmarks.server_process import ServerProcess

STEP_SECONDS = 0.02  # each engine step's added time (tests/fault_injection.py), so streams stay open


def slow_server(tiny_dir, tmp_path, *args: str) -> ServerProcess:
    trigger = tmp_path / "slow"
    trigger.touch()
    env = {"MONOVL_FAULT": "slow", "MONOVL_FAULT_TRIGGER": str(trigger), "MONOVL_STEP_SECONDS": str(STEP_SECONDS)}
    return ServerProcess(tiny_dir, *args, env=env, module="tests.fault_injection")


def stream_events(url: str, max_tokens: int, into: list, headers: dict | None = None) -> None:
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": max_tokens, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=60
    ) as response:
        into.append(response.status_code)
        into.extend(line for line in response.iter_lines() if line.startswith("data: "))


def finish_reasons(events: list) -> list:
    chunks = [json.loads(e[6:]) for e in events if isinstance(e, str) and e != "data: [DONE]"]
    assert not [c for c in chunks if "error" in c], chunks
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def chat(url: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_sigterm_serves_through_the_delay_refuses_then_exits_when_streams_end(tiny_dir, tmp_path):
    server = slow_server(tiny_dir, tmp_path, "--drain-delay", "2", "--graceful-timeout", "30")
    events: list = []
    try:
        stream = threading.Thread(target=stream_events, args=(server.url, 300, events))  # open past the delay
        stream.start()
        while len(events) < 3:  # the stream has begun
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/health").status_code == 503  # unready: balancers stop sending
        assert chat(server.url).status_code == 200  # but what still comes is served
        time.sleep(2.2)  # past the delay
        refused = chat(server.url)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert refused.headers["connection"] == "close" and refused.headers["retry-after"]
        health = httpx.get(f"{server.url}/health")  # the port is still open while the stream runs
        assert health.status_code == 503
        assert stream.is_alive()
        stream.join(timeout=30)
        assert events[0] == 200 and events[-1] == "data: [DONE]" and finish_reasons(events) == ["length"]
        assert server.process.wait(timeout=10) == 0
    finally:
        log = server.stop()
    assert "outcome=error error='shutting_down: the server is shutting down'" in log, log[-3000:]


def test_a_second_sigterm_skips_the_delay(tiny_dir, tmp_path):
    server = slow_server(tiny_dir, tmp_path, "--drain-delay", "60")
    try:
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert chat(server.url).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    finally:
        server.stop()


def response_events(url: str, max_tokens: int, into: list) -> None:
    # greedy: this answer runs past the deadline (Responses has no ignore_eos; sampled, it may stop first)
    body = {"input": "go", "max_output_tokens": max_tokens, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=60) as response:
        into.append(response.status_code)
        into.extend(line for line in response.iter_lines() if line.startswith("data: "))


@pytest.mark.parametrize("route", ["chat", "responses"])
def test_streams_still_open_at_the_deadline_end_as_their_api_ends_a_failure(tiny_dir, tmp_path, route):
    """A chat stream: an error event and [DONE]; a Responses stream: its open items done and
    `response.failed`, as OpenAI's events are."""
    deadline = 2
    server = slow_server(tiny_dir, tmp_path, "--graceful-timeout", str(deadline))
    events: list = []
    reader = stream_events if route == "chat" else response_events
    try:
        stream = threading.Thread(target=reader, args=(server.url, 2000, events))  # far longer than the deadline
        stream.start()
        while len(events) < 5:
            time.sleep(0.05)
        sent = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        stream.join(timeout=30)
        assert server.process.wait(timeout=30) == 0
        assert time.perf_counter() - sent < deadline + 5
        if route == "chat":
            last = json.loads(events[-2][6:])
            assert last["error"]["code"] == "shutting_down" and events[-1] == "data: [DONE]"
        else:
            done, failed = (json.loads(e[6:]) for e in events[-2:])
            assert done["type"] == "response.output_item.done" and done["item"]["status"] == "incomplete"
            assert failed["type"] == "response.failed" and failed["response"]["error"]["code"] == "shutting_down"
            numbers = [json.loads(e[6:])["sequence_number"] for e in events[1:]]
            assert numbers == list(range(len(numbers)))
    finally:
        log = server.stop()
    assert "outcome=drained" in log
