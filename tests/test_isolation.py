"""No single request or client can stop, starve or bloat the server: each case through a real
`monovl serve` process, with raw sockets where a polite client library would not do it."""

import asyncio
import json
import signal
import socket
import threading
import time

import httpx
import pytest
import torch

from benchmarks.server_process import ServerProcess
from tests.conftest import png_bytes
from tests.hostile import data_url, hundred_mib, image_message
from tests.load import stream_events
from tests.server_helpers import JSON, closed_by_server, raw_request

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_dir):
    # Four sequences at a time, so that more requests queue; short client deadlines.
    process = ServerProcess(
        tiny_dir, "--max-num-seqs", "4", "--kv-cache-memory", "0.1", "--header-timeout", "2", "--body-timeout", "2"
    )
    yield process
    process.stop()


def chat_url(server: ServerProcess) -> str:
    return f"{server.url}/v1/chat/completions"


def wait_for(condition, timeout: float) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `timeout`."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def test_the_context_is_the_configs_as_vllm_derives_it(server):
    card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert card["max_model_len"] == 32768 * 2  # max_position_embeddings x the dynamic RoPE factor


def test_a_chunked_body_over_the_limit_is_refused_as_it_crosses_it(server):
    server.reset_peak()
    idle = server.resident_mib()
    started = time.perf_counter()
    try:
        response = httpx.post(chat_url(server), content=hundred_mib(), headers=JSON, timeout=60)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    except httpx.TransportError:
        pass  # the server closed the connection after its 413, while the client was still sending
    assert time.perf_counter() - started < 5
    assert server.resident_mib(peak=True) - idle < 200
    assert httpx.post(chat_url(server), json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_a_50_mb_text_is_refused_before_it_is_tokenized(server):
    body = json.dumps({"messages": [{"role": "user", "content": "word " * 10_000_000}]})
    started = time.perf_counter()
    response = httpx.post(chat_url(server), content=body, headers=JSON, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert time.perf_counter() - started < 3


def test_streamed_and_plain_requests_fail_alike_before_the_response_starts(server):
    for stream in (False, True):
        response = httpx.post(chat_url(server), json={"messages": USER, "max_tokens": 10**9, "stream": stream})
        assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
        assert "maximum context length is 65536 tokens" in response.json()["error"]["message"]


def test_clients_that_leave_while_queued_are_forgotten_within_a_second(server):
    runners = [raw_request(server, {"messages": USER, "max_tokens": 60000, "ignore_eos": True, "stream": True})
               for _ in range(4)]  # fmt: skip
    assert wait_for(lambda: server.metric("monovl:num_requests_running") == 4, 10) is not None
    leavers = [
        raw_request(
            server, {"messages": [{"role": "user", "content": f"q {k}"}], "max_tokens": 50, "stream": k % 2 == 1}
        )
        for k in range(30)
    ]
    assert wait_for(lambda: server.metric("monovl:num_requests_waiting") == 30, 10) is not None
    for sock in leavers:
        sock.close()
    gone = wait_for(lambda: server.metric("monovl:num_requests_waiting") == 0, 5)
    for sock in runners:
        sock.close()
    assert gone is not None and gone < 1.0
    assert wait_for(lambda: server.metric("monovl:kv_cache_usage_perc") == 0, 5) is not None


def test_clients_that_leave_during_preprocessing_are_not_preprocessed(server):
    before = server.metric("monovl:image_preprocess_seconds_count")
    big = data_url(png_bytes(2600, 2000, seed=42, fmt="JPEG"))  # 13 tiles: tens of milliseconds each
    leavers = [raw_request(server, {"messages": image_message(big), "max_tokens": 2}) for _ in range(24)]
    time.sleep(0.3)
    for sock in leavers:
        sock.close()
    time.sleep(2.0)
    preprocessed = server.metric("monovl:image_preprocess_seconds_count") - before
    assert preprocessed < 12  # the pool's queued jobs were cancelled with their requests
    assert httpx.post(chat_url(server), json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_slow_headers_are_cut_off_and_others_are_served_meanwhile(server):
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    for sock in slow:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.01)
    started = time.perf_counter()
    for _ in range(3):
        response = httpx.post(chat_url(server), json={"messages": USER, "max_tokens": 2}, timeout=5)
        assert response.status_code == 200
    assert time.perf_counter() - started < 1.5  # before any slow client was cut off
    open_ = set(range(len(slow)))
    while open_ and time.perf_counter() - started < 5:
        open_ -= {k for k in open_ if closed_by_server(slow[k])}
        time.sleep(0.2)
    took = time.perf_counter() - started
    for sock in slow:
        sock.close()
    assert not open_ and took < 4  # --header-timeout 2


def test_a_body_that_stalls_gets_a_408(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    sock.sendall(head + b'Content-Length: 1000\r\n\r\n{"messages"')
    sock.settimeout(5)
    started = time.perf_counter()
    answer = b""
    while chunk := sock.recv(4096):  # the server closes the connection after its answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert time.perf_counter() - started < 4  # --body-timeout 2
    sock.close()


def test_memory_stays_flat_after_hostile_bodies_and_many_images(server):
    images = [data_url(png_bytes(900 + 37 * k, 700 + 23 * k, seed=k)) for k in range(24)]
    for url in images[:3]:
        assert httpx.post(chat_url(server), json={"messages": image_message(url), "max_tokens": 4}).status_code == 200
    time.sleep(6)  # the server trims freed memory every 5 s
    warm = server.resident_mib()
    huge = json.dumps({"messages": [{"role": "user", "content": "word " * 10_000_000}]})
    for _ in range(2):
        httpx.post(chat_url(server), content=huge, headers=JSON, timeout=60)
        httpx.post(chat_url(server), content=b"{" + b"x" * (60 * 2**20), headers=JSON, timeout=60)
    for url in images:
        assert httpx.post(chat_url(server), json={"messages": image_message(url), "max_tokens": 4}).status_code == 200
    time.sleep(6)
    assert server.resident_mib() < warm * 1.10


def _first_token_time(sock: socket.socket, arrived: list[float]) -> None:
    received = b""
    while b'"content":"' not in received.replace(b'"content":""', b""):  # the role chunk has ""
        chunk = sock.recv(65536)
        if not chunk:
            return
        received += chunk
    arrived.append(time.perf_counter())


def test_a_short_chat_goes_beside_a_long_prefill(tiny_dir):
    long_server = ServerProcess(tiny_dir, "--max-num-batched-tokens", "256")
    try:
        long_prompt = {"messages": [{"role": "user", "content": "story " * 12000}], "max_tokens": 2, "stream": True}
        sock = raw_request(long_server, long_prompt)
        sock.settimeout(60)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # its role chunk: it is prefilling now
        arrived: list[float] = []
        reader = threading.Thread(target=_first_token_time, args=(sock, arrived))
        reader.start()
        short = httpx.post(chat_url(long_server), json={"messages": USER, "max_tokens": 8}, timeout=60)
        short_done = time.perf_counter()
        reader.join(60)
        sock.close()
        assert short.status_code == 200 and arrived and short_done < arrived[0]
    finally:
        long_server.stop()


def test_sigterm_ends_open_streams_with_an_error_event_and_done(tiny_dir):
    process = ServerProcess(tiny_dir, "--graceful-timeout", "3")
    body = {"messages": USER, "max_tokens": 60000, "ignore_eos": True, "stream": True}

    async def main():
        started = [asyncio.Event() for _ in range(3)]
        streams = [asyncio.create_task(stream_events(chat_url(process), body, e)) for e in started]
        for event in started:
            await event.wait()
        sent = time.perf_counter()
        process.process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*streams)
        return results, time.perf_counter() - sent

    try:
        results, took = asyncio.run(main())
        for events in results:
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["code"] == "shutting_down"
        assert 1.5 < took < 3.5
        assert process.process.wait(timeout=10) == 0
    finally:
        process.stop()


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="a real device-side assert needs CUDA")


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("fault", "device"), [("lost", "cpu"), pytest.param("device-assert", "cuda", marks=CUDA_ONLY)])
def test_a_dead_device_ends_open_requests_and_the_process_exits_1(tiny_dir, tmp_path, stream, fault, device):
    trigger = tmp_path / "fail-now"
    env = {"MONOVL_FAULT_TRIGGER": str(trigger), "MONOVL_FAULT": fault}
    process = ServerProcess(tiny_dir, "--device", device, env=env, module="tests.fault_injection")
    body = {"messages": USER, "max_tokens": 60000, "ignore_eos": True, "stream": stream}

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            if not stream:
                pending = asyncio.create_task(client.post(chat_url(process), json=body))
                await asyncio.sleep(0.5)
                trigger.touch()
                return await pending
            async with client.stream("POST", chat_url(process), json=body) as response:
                events = []
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        if len(events) == 3:
                            trigger.touch()
                return events

    try:
        outcome = asyncio.run(main())
        if stream:
            assert outcome[-1] == "[DONE]" and json.loads(outcome[-2])["error"]["code"] == "engine_dead"
        else:
            assert outcome.status_code == 503 and outcome.json()["error"]["code"] == "engine_dead"
        assert process.process.wait(timeout=15) == 1
        assert "the engine stopped (DeviceError" in process.output()
    finally:
        process.stop()
