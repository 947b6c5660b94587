"""Two replicas behind deploy/haproxy/haproxy.cfg on loopback: a conversation stays on one replica
(its follow-up turns hit the prefix cache), conversations spread over both, new chats are
answered when one replica dies, and a replica drains under load with no client seeing an error."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.server_process import ServerProcess, free_port
from tests.test_drain import slow_server

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or (Path("/usr/sbin/haproxy") if Path("/usr/sbin/haproxy").exists() else None)

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (apt-get install haproxy; .ci/run installs it)")


@contextlib.contextmanager
def proxy_to(replicas: list[ServerProcess]):
    """HAProxy with the shipped config in front of `replicas`; its URL once it sees them healthy."""
    port = free_port()
    env = {
        **os.environ,
        "MONOVL_PROXY_BIND": f"127.0.0.1:{port}",
        "MONOVL_REPLICA_1": f"127.0.0.1:{replicas[0].port}",
        "MONOVL_REPLICA_2": f"127.0.0.1:{replicas[1].port}",
    }
    proxy = subprocess.Popen([str(HAPROXY), "-db", "-f", str(CONFIG)], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tiny_dir):
    replicas = [ServerProcess(tiny_dir), ServerProcess(tiny_dir)]
    try:
        with proxy_to(replicas) as url:
            yield url, replicas
    finally:
        for replica in replicas:
            replica.stop()


def chat(url: str, messages: list[dict], user: str | None = None, session: str | None = None) -> httpx.Response:
    body = {"messages": messages, "max_tokens": 4, "temperature": 0}
    if user:
        body["user"] = user
    headers = {"X-Session-Id": session} if session else {}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_a_conversation_stays_on_its_replica_and_hits_its_prefix_cache(cluster):
    url, _ = cluster
    for key in ({"user": "alice"}, {"session": "session-7"}):
        first_turn = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper. " * 8}]
        first = chat(url, first_turn, **key)
        answer = first.json()["choices"][0]["message"]["content"]
        second_turn = [*first_turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "More."}]
        second = chat(url, second_turn, **key)
        assert first.status_code == second.status_code == 200
        assert first.headers["x-monovl-replica"] == second.headers["x-monovl-replica"]
        assert second.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64


def test_conversations_spread_over_both_replicas(cluster):
    url, _ = cluster
    served_by = {chat(url, [{"role": "user", "content": "hi"}], user=f"user-{k}").headers["x-monovl-replica"]
                 for k in range(16)}  # fmt: skip
    assert served_by == {"replica1", "replica2"}


def test_streams_pass_through_the_proxy_as_they_are_made(cluster):
    url, _ = cluster
    body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 2000, "ignore_eos": True, "stream": True}
    started, first, events = time.perf_counter(), None, []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                first = first or time.perf_counter() - started
    total = time.perf_counter() - started
    assert events[-1] == "data: [DONE]" and len(events) > 1000 and first < total / 3  # not held until the end


def test_new_chats_are_answered_when_a_replica_dies(cluster):
    url, replicas = cluster
    users = [f"survivor-{k}" for k in range(12)]
    before = {
        user: chat(url, [{"role": "user", "content": "hi"}], user=user).headers["x-monovl-replica"] for user in users
    }
    assert set(before.values()) == {"replica1", "replica2"}
    replicas[0].process.kill()  # replica1, at once: its connections are refused from now on
    replicas[0].process.wait(timeout=10)
    for user in users:  # at once, before the health check has noticed, and later
        response = chat(url, [{"role": "user", "content": "still there?"}], user=user)
        assert response.status_code == 200 and response.headers["x-monovl-replica"] == "replica2"
    time.sleep(5)
    assert (
        chat(url, [{"role": "user", "content": "and now?"}], user="newcomer").headers["x-monovl-replica"] == "replica2"
    )


def test_a_replica_drains_under_load_and_no_client_sees_an_error(tiny_dir, tmp_path):
    # As the proxy's comment says: a drain delay above the health check's time to mark a replica down.
    replicas = [slow_server(tiny_dir, tmp_path, "--drain-delay", "3") for _ in range(2)]
    outcomes: list[tuple[str, int, str]] = []  # (kind, status, replica or how the stream ended)
    stop = threading.Event()

    def chats(k: int, url: str) -> None:
        for turn in range(1000):
            if stop.is_set():
                return
            response = chat(url, [{"role": "user", "content": f"hi {turn}"}], user=f"load-{k}-{turn}")
            outcomes.append(("chat", response.status_code, response.headers.get("x-monovl-replica", "")))

    def streams(k: int, url: str) -> None:
        for turn in range(1000):
            if stop.is_set():
                return
            body = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 60, "ignore_eos": True}
            body |= {"stream": True, "user": f"stream-{k}-{turn}"}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
                events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
            chunks = [json.loads(e) for e in events[:-1]]
            ended = "error" if any("error" in c for c in chunks) or events[-1:] != ["[DONE]"] else "done"
            outcomes.append(("stream", response.status_code, ended))

    try:
        with proxy_to(replicas) as url:
            clients = [threading.Thread(target=chats, args=(k, url)) for k in range(6)]
            clients += [threading.Thread(target=streams, args=(k, url)) for k in range(4)]
            for client in clients:
                client.start()
            time.sleep(2)
            served_before = {replica for kind, _, replica in outcomes if kind == "chat"}
            replicas[0].process.send_signal(signal.SIGTERM)
            exit_status = replicas[0].process.wait(timeout=40)
            time.sleep(1)
            stop.set()
            for client in clients:
                client.join(timeout=60)
    finally:
        stop.set()
        logs = [replica.stop() for replica in replicas]
    assert served_before == {"replica1", "replica2"}
    assert exit_status == 0, logs[0][-3000:]
    failed = [o for o in outcomes if o[1] != 200 or o[2] == "error"]
    assert not failed, failed
    assert sum(kind == "stream" for kind, _, _ in outcomes) >= 8 and len(outcomes) >= 50
