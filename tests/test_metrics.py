"""The metrics a fresh server exposes: every series present at 0, as vLLM's are."""

import pytest

from server.metrics import FINISH_REASONS, PREFIXES, Metrics


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_series_is_there_at_zero_before_the_first_request(prefix):
    text = Metrics("m", prefix).render().decode()
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
    ):
        assert f'{prefix}:{histogram}_count{{model_name="m"}} 0.0' in text, histogram
