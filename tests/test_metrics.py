"""The metrics: every series present at 0 on a fresh server, as vLLM's are, and each counting what
its name says, checked against the responses' own usage."""

from types import SimpleNamespace

import httpx
import pytest

from benchmarks.server_process import ServerProcess
from monovl.engine.core_messages import EngineStats
from monovl.server.metrics import FINISH_REASONS, PREFIXES, Metrics

ENGINE_SERIES = (
    "num_requests_running",
    "num_requests_waiting",
    "kv_cache_usage_perc",
    "gpu_cache_usage_perc",
    "num_preemptions_total",
    "iteration_tokens_total_count",
)


def fresh(prefix: str) -> Metrics:
    metrics = Metrics("m", prefix)
    info = SimpleNamespace(block_size=16, num_blocks=100, dtype="float32")
    metrics.track_engine(lambda: EngineStats(0, 0, 0.0, 100), info, prefix_caching=True)
    return metrics


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_series_is_there_at_zero_before_the_first_request(prefix):
    text = fresh(prefix).render().decode()
    for series in ENGINE_SERIES:
        assert f'{prefix}:{series}{{model_name="m"}} 0.0' in text, series
    assert f'{prefix}:iteration_tokens_total_bucket{{le="+Inf",model_name="m"}} 0.0' in text
    assert (
        f'{prefix}:cache_config_info{{block_size="16",cache_dtype="float32",enable_prefix_caching="True",'
        'model_name="m",num_gpu_blocks="100"} 1.0' in text
    )
    for counter in ("prompt_tokens", "generation_tokens", "prefix_cache_hits", "prefix_cache_queries"):
        assert f'{prefix}:{counter}_total{{model_name="m"}} 0.0' in text, counter
    for reason in FINISH_REASONS:
        assert f'{prefix}:request_success_total{{finished_reason="{reason}",model_name="m"}} 0.0' in text, reason
    for histogram in (
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "e2e_request_latency_seconds",
        "image_preprocess_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
        "request_inference_time_seconds",
        "time_per_output_token_seconds",
        "request_params_max_tokens",
        "request_prompt_tokens",
        "request_generation_tokens",
        "request_params_n",
        "request_max_num_generation_tokens",
    ):
        assert f'{prefix}:{histogram}_count{{model_name="m"}} 0.0' in text, histogram


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir)
    yield process
    process.stop()


def test_the_counters_count_what_the_responses_report(server):
    names = ["prompt_tokens_total", "generation_tokens_total", "prefix_cache_hits_total", "prefix_cache_queries_total"]
    names += ["iteration_tokens_total_sum", "request_params_n_sum", "request_max_num_generation_tokens_sum"]

    def read() -> dict[str, float]:
        return {name: server.metric(f"monovl:{name}") for name in names}

    before = read()
    prompt = "Tell me about lighthouses and the people who keep them. " * 6  # several blocks: cached the second time
    usages, longest, steps = [], 0, []
    for n, max_tokens in ((1, 7), (1, 7), (2, 5)):
        steps.append(server.metric("monovl:iteration_tokens_total_sum"))
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "n": n}
        answer = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "ignore_eos": True}, timeout=60).json()
        usages.append(answer["usage"])
        longest += max_tokens
    delta = {name: value - before[name] for name, value in read().items()}
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert cached >= 64  # the repeated prompt hit the prefix cache
    assert delta["prefix_cache_hits_total"] == cached
    assert (
        delta["prefix_cache_queries_total"] == delta["prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    )
    assert delta["generation_tokens_total"] == sum(u["completion_tokens"] for u in usages) == 7 + 7 + 10
    assert delta["request_params_n_sum"] == 4 and delta["request_max_num_generation_tokens_sum"] == longest
    # A request of one completion runs its uncached prompt tokens once, then one token a step but the last.
    uncached = [u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"] for u in usages]
    assert steps[1] - steps[0] == uncached[0] + 7 - 1 and steps[2] - steps[1] == uncached[1] + 7 - 1
    assert server.metric("monovl:iteration_tokens_total_sum") - steps[2] >= uncached[2] + 2 * (5 - 1)
