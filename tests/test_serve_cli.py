"""`monovl serve` as vLLM users call it: the model first, --version, a busy port refused before the
model loads, the startup summary and stats lines, and vLLM's metric names on request."""

import socket
import subprocess
import sys
import time
from importlib.metadata import version

import httpx

from benchmarks.server_process import ServerProcess


def monovl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "monovl.server.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version():
    done = monovl("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"monovl {version('monovl')}"


def test_a_busy_port_is_refused_before_the_model_loads():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # The model does not exist either: the port's error comes first, so nothing was loaded.
        started = time.perf_counter()
        done = monovl("serve", "/no/such/checkpoint", "--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "checkpoint" not in done.stderr and time.perf_counter() - started < 30


def test_two_different_models_are_an_error(tiny_dir):
    done = monovl("serve", str(tiny_dir), "--model", "other/model")
    assert done.returncode == 2 and "two models given" in done.stderr


def test_model_first_vllm_metric_names_startup_summary_and_stats_lines(tiny_dir):
    server = ServerProcess(None, str(tiny_dir), "--metrics-prefix", "vllm", "--stats-interval", "0.3")
    try:
        assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == str(tiny_dir)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "ignore_eos": True}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
        metrics = httpx.get(f"{server.url}/metrics").text
        for name in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
            "vllm:request_success_total",
            "vllm:time_to_first_token_seconds_bucket",
            "vllm:inter_token_latency_seconds_bucket",
            "vllm:e2e_request_latency_seconds_bucket",
            "vllm:request_prompt_tokens_bucket",
            "vllm:request_generation_tokens_bucket",
            "vllm:request_queue_time_seconds_bucket",
            "vllm:request_prefill_time_seconds_bucket",
            "vllm:request_decode_time_seconds_bucket",
            "vllm:request_inference_time_seconds_bucket",
            "vllm:time_per_output_token_seconds_bucket",
            "vllm:request_params_max_tokens_bucket",
        ]:
            assert name in metrics, name
        assert "monovl:" not in metrics
        assert server.metric("vllm:generation_tokens_total") == 40
        assert server.metric("vllm:time_per_output_token_seconds_count") == 1
        assert server.metric("vllm:request_params_max_tokens_sum") == 40
        time.sleep(0.8)
    finally:
        log = server.stop()
    assert "loaded in" in log and "maximum concurrency at the full context" in log
    assert "Avg generation throughput" in log and "Prefix cache hit rate" in log
    # Idle intervals write nothing: a few lines at most, not one every 0.3 s since startup.
    assert log.count("Avg generation throughput") <= 3
