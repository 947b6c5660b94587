"""Prometheus metrics, named as vLLM names them, under our prefix or vLLM's (`--metrics-prefix vllm`,
so that dashboards made for vLLM read them unchanged)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from monovl.engine.core_messages import EngineInfo, EngineStats
from monovl.engine.outputs import RequestOutput
from monovl.engine.step_tokens import STEP_TOKEN_BUCKETS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
PREFIXES = ("monovl", "vllm")
FINISH_REASONS = ("stop", "length", "abort", "error")  # `request_success`'s labels, as vLLM's
N_BUCKETS = (1, 2, 5, 10, 20)  # vLLM's for request_params_n


class Metrics:
    def __init__(self, model_name: str, prefix: str = "monovl") -> None:
        if prefix not in PREFIXES:
            raise ValueError(f"--metrics-prefix must be one of {', '.join(PREFIXES)}")
        self.prefix = prefix
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry

        def name(metric: str) -> str:
            return f"{prefix}:{metric}"

        def histogram(metric: str, doc: str, buckets: tuple = LATENCY_BUCKETS) -> Histogram:
            return Histogram(name(metric), doc, labels, buckets=buckets, registry=r)

        def gauge(metric: str, doc: str) -> Gauge:
            return Gauge(name(metric), doc, labels, registry=r)

        self.num_requests_running = gauge("num_requests_running", "Requests in the running batch")
        self.num_requests_waiting = gauge("num_requests_waiting", "Requests waiting to run")
        self.kv_cache_usage = gauge("kv_cache_usage_perc", "Fraction of KV blocks in use")
        # The same fraction under the name older vLLM dashboards read.
        self.gpu_cache_usage = gauge("gpu_cache_usage_perc", "Fraction of KV blocks in use (older name)")
        self.cache_config = Gauge(
            name("cache_config_info"),
            "The KV cache's configuration, in its labels",
            ["model_name", "block_size", "num_gpu_blocks", "cache_dtype", "enable_prefix_caching"],
            registry=r,
        )
        self.prompt_tokens = Counter(name("prompt_tokens"), "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter(name("generation_tokens"), "Tokens generated", labels, registry=r)
        self.prefix_cache_hits = Counter(
            name("prefix_cache_hits"), "Prompt tokens found in the prefix cache", labels, registry=r
        )
        self.prefix_cache_queries = Counter(name("prefix_cache_queries"), "Prompt tokens looked up", labels, registry=r)
        self.request_success = Counter(
            name("request_success"), "Finished requests", [*labels, "finished_reason"], registry=r
        )
        self._ttft = histogram("time_to_first_token_seconds", "Time to first token")
        self._itl = histogram("inter_token_latency_seconds", "Time between tokens")
        self._e2e = histogram("e2e_request_latency_seconds", "Request latency")
        self._image = histogram(
            "image_preprocess_seconds", "Image decode, tiling and prompt time per request", LATENCY_BUCKETS
        )
        self._queue = histogram("request_queue_time_seconds", "Time waiting to be scheduled")
        self._prefill = histogram("request_prefill_time_seconds", "Time from scheduled to first token")
        self._decode = histogram("request_decode_time_seconds", "Time from first token to the last")
        self._inference = histogram(
            "request_inference_time_seconds", "Time running (prefill and decode)", LATENCY_BUCKETS
        )
        self._tpot = histogram(
            "time_per_output_token_seconds", "Decode time per token after the first", LATENCY_BUCKETS
        )
        self._max_tokens = histogram("request_params_max_tokens", "max_tokens per request", TOKEN_BUCKETS)
        self._prompt_len = histogram("request_prompt_tokens", "Prompt tokens per request", TOKEN_BUCKETS)
        self._output_len = histogram("request_generation_tokens", "Tokens generated per completion", TOKEN_BUCKETS)
        self._n = histogram("request_params_n", "n per request", N_BUCKETS)
        self._longest = histogram(
            "request_max_num_generation_tokens", "Most tokens one of a request's completions generated", TOKEN_BUCKETS
        )
        self.model_name = model_name
        # Every series exists at 0 from the start (as vLLM's), so rate() and alerts see a fresh replica.
        for family in (self.prompt_tokens, self.generation_tokens, self.prefix_cache_hits, self.prefix_cache_queries):
            family.labels(model_name)
        for family in (self._queue, self._prefill, self._decode, self._inference, self._tpot):
            family.labels(model_name)
        for family in (self._max_tokens, self._prompt_len, self._output_len, self._n, self._longest):
            family.labels(model_name)
        for reason in FINISH_REASONS:
            self.request_success.labels(model_name, reason)
        self.time_to_first_token = self._ttft.labels(model_name)
        self.inter_token_latency = self._itl.labels(model_name)
        self.e2e_request_latency = self._e2e.labels(model_name)
        self.image_preprocess_seconds = self._image.labels(model_name)

    def track_engine(self, stats: Callable[[], EngineStats], info: EngineInfo, prefix_caching: bool) -> None:
        """The engine's gauges and counters, read from its latest stats at each scrape."""
        name = self.model_name
        self.num_requests_running.labels(name).set_function(lambda: stats().running)
        self.num_requests_waiting.labels(name).set_function(lambda: stats().waiting)
        self.kv_cache_usage.labels(name).set_function(lambda: stats().kv_cache_usage)
        self.gpu_cache_usage.labels(name).set_function(lambda: stats().kv_cache_usage)
        labels = (str(info.block_size), str(info.num_blocks), info.dtype, str(prefix_caching))
        self.cache_config.labels(name, *labels).set(1)
        self.registry.register(_EngineCounts(self.prefix, name, stats))

    def prompt_started(self, output: RequestOutput) -> None:
        """A request's first output: its prompt was processed (counted once for its n completions)."""
        name = self.model_name
        self.prompt_tokens.labels(name).inc(output.num_prompt_tokens)
        self.prefix_cache_queries.labels(name).inc(output.num_prompt_tokens)
        self.prefix_cache_hits.labels(name).inc(output.num_cached_tokens)
        self._prompt_len.labels(name).observe(output.num_prompt_tokens)

    def request_admitted(self, n: int, max_tokens: int | None) -> None:
        self._n.labels(self.model_name).observe(n)
        if max_tokens is not None:  # None: the rest of the context, which the engine resolves
            self._max_tokens.labels(self.model_name).observe(max_tokens)

    def request_completed(self, longest: int) -> None:
        """All of a request's completions finished; the longest generated `longest` tokens."""
        self._longest.labels(self.model_name).observe(longest)

    def tokens_generated(self, count: int) -> None:
        if count:
            self.generation_tokens.labels(self.model_name).inc(count)

    def request_finished(self, output: RequestOutput, latency: float) -> None:
        name = self.model_name
        self.request_success.labels(name, output.finish_reason or "unknown").inc()
        self.e2e_request_latency.observe(latency)
        self._output_len.labels(name).observe(output.num_output_tokens)
        timings = output.timings
        if timings is not None:
            self._queue.labels(name).observe(timings.queued)
            self._prefill.labels(name).observe(timings.prefill)
            self._decode.labels(name).observe(timings.decode)
            self._inference.labels(name).observe(timings.prefill + timings.decode)
            if output.num_output_tokens > 1:
                self._tpot.labels(name).observe(timings.decode / (output.num_output_tokens - 1))

    def value(self, sample: str) -> float:
        """A sample's value now (`prompt_tokens_total`, `num_requests_running`...), 0 before it has one."""
        value = self.registry.get_sample_value(f"{self.prefix}:{sample}", {"model_name": self.model_name})
        return value or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCounts(Collector):
    """The engine's own running counts, as of its latest stats: preemptions and step sizes."""

    def __init__(self, prefix: str, model_name: str, stats: Callable[[], EngineStats]) -> None:
        self.prefix, self.model_name, self.stats = prefix, model_name, stats

    def collect(self):
        stats = self.stats()
        preemptions = CounterMetricFamily(
            f"{self.prefix}:num_preemptions", "Requests preempted for KV room", labels=["model_name"]
        )
        preemptions.add_metric([self.model_name], stats.num_preemptions)
        yield preemptions
        counts = stats.step_token_counts or (0,) * (len(STEP_TOKEN_BUCKETS) + 1)
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, STEP_TOKEN_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        steps = HistogramMetricFamily(
            f"{self.prefix}:iteration_tokens_total", "Tokens per engine step", labels=["model_name"]
        )
        steps.add_metric([self.model_name], buckets, stats.step_tokens_total)
        yield steps
