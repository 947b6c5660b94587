"""Structured outputs cannot stall a server: slow schemas are refused at the compile limit while
plain chats go on, and a compile in flight does not hold up a shutdown."""

import signal
import threading
import time

import httpx
import pytest

from benchmarks.server_process import ServerProcess

USER = [{"role": "user", "content": "hi"}]


def slow_schema(tag: str, count: int = 4000) -> dict:
    """Thousands of optional properties: past a 1 s compile limit; `tag` makes each one new to the cache."""
    properties = {f"{tag}_{i}": {"type": "integer"} for i in range(count)}
    return {
        "type": "json_schema",
        "json_schema": {"name": "slow", "schema": {"type": "object", "properties": properties}},
    }


def structured(server: ServerProcess, tag: str, answers: list) -> None:
    body = {"messages": USER, "max_tokens": 4, "response_format": slow_schema(tag)}
    answers.append(httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120))


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--grammar-compile-timeout", "1")
    yield process
    process.stop()


def test_slow_schemas_are_refused_at_the_limit_and_plain_chats_go_on(server):
    # The compiler's probe starts on the first grammar.
    body = {"messages": USER, "max_tokens": 4, "response_format": {"type": "json_object"}}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    answers: list[httpx.Response] = []
    attackers = [threading.Thread(target=structured, args=(server, f"t{i}", answers)) for i in range(6)]
    chat_seconds = []
    for attacker in attackers[:2]:
        attacker.start()
    for attacker in attackers[2:]:  # two at a time, for several rounds
        time.sleep(1.0)
        attacker.start()
        started = time.perf_counter()
        plain = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 8}, timeout=60)
        chat_seconds.append(time.perf_counter() - started)
        assert plain.status_code == 200
    for attacker in attackers:
        attacker.join(60)
    assert max(chat_seconds) < 5, chat_seconds
    assert len(answers) == 6
    for answer in answers:
        error = answer.json()["error"]
        assert (answer.status_code, error["code"]) in {(400, "grammar_too_complex"), (503, "grammar_compiler_busy")}
        assert error["param"] == "response_format.json_schema.schema"
    assert any(answer.status_code == 400 for answer in answers)
    assert "too complex" in next(a for a in answers if a.status_code == 400).json()["error"]["message"]


def test_sigterm_with_a_compile_in_flight_exits_within_the_graceful_timeout(tiny_dir):
    process = ServerProcess(tiny_dir, "--grammar-compile-timeout", "120", "--graceful-timeout", "3")
    try:
        answers: list[httpx.Response] = []
        attacker = threading.Thread(target=structured, args=(process, "sigterm", answers))
        attacker.start()
        deadline = time.monotonic() + 60  # until the schema is compiling in the probe
        while not any(process.process_name(pid) == "grammar probe" for pid in process.processes()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(3)
        sent = time.perf_counter()
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(timeout=3 + 10) == 0
        assert time.perf_counter() - sent < 3 + 10
        attacker.join(10)
        assert answers and answers[0].status_code == 503
    finally:
        process.stop()
