"""Prometheus metrics, named as vLLM names them with our prefix."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.outputs import RequestOutput

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.num_requests_running = Gauge(
            "monovl:num_requests_running", "Requests in the running batch", labels, registry=r
        )
        self.num_requests_waiting = Gauge("monovl:num_requests_waiting", "Requests waiting to run", labels, registry=r)
        self.kv_cache_usage = Gauge("monovl:kv_cache_usage_perc", "Fraction of KV blocks in use", labels, registry=r)
        self.prompt_tokens = Counter("monovl:prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter("monovl:generation_tokens", "Tokens generated", labels, registry=r)
        self.prefix_cache_hits = Counter(
            "monovl:prefix_cache_hits", "Prompt tokens found in the prefix cache", labels, registry=r
        )
        self.prefix_cache_queries = Counter(
            "monovl:prefix_cache_queries", "Prompt tokens looked up", labels, registry=r
        )
        self.request_success = Counter(
            "monovl:request_success", "Finished requests", [*labels, "finished_reason"], registry=r
        )
        self._ttft = Histogram(
            "monovl:time_to_first_token_seconds", "Time to first token", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self._itl = Histogram(
            "monovl:inter_token_latency_seconds", "Time between tokens", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self._e2e = Histogram(
            "monovl:e2e_request_latency_seconds", "Request latency", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self._image = Histogram(
            "monovl:image_preprocess_seconds",
            "Image decode, tiling and prompt time per request",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_name = model_name
        self.time_to_first_token = self._ttft.labels(model_name)
        self.inter_token_latency = self._itl.labels(model_name)
        self.e2e_request_latency = self._e2e.labels(model_name)
        self.image_preprocess_seconds = self._image.labels(model_name)

    def track_engine(self, running: Callable[[], int], waiting: Callable[[], int], usage: Callable[[], float]) -> None:
        self.num_requests_running.labels(self.model_name).set_function(running)
        self.num_requests_waiting.labels(self.model_name).set_function(waiting)
        self.kv_cache_usage.labels(self.model_name).set_function(usage)

    def request_finished(self, output: RequestOutput, latency: float) -> None:
        name = self.model_name
        self.request_success.labels(name, output.finish_reason or "unknown").inc()
        self.generation_tokens.labels(name).inc(output.num_output_tokens)
        self.e2e_request_latency.observe(latency)
        if output.index == 0:  # the n completions of a request share one prompt
            self.prompt_tokens.labels(name).inc(output.num_prompt_tokens)
            self.prefix_cache_queries.labels(name).inc(output.num_prompt_tokens)
            self.prefix_cache_hits.labels(name).inc(output.num_cached_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
