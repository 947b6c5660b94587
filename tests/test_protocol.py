"""The wire models' mapping to SamplingParams, field by field where OpenAI and vLLM define an order."""

import pytest

from monovl.engine.sampling_params import SamplingParamsError
from monovl.server.protocol import ChatCompletionRequest

USER = [{"role": "user", "content": "Hi"}]


def max_tokens(**fields) -> int | None:
    return ChatCompletionRequest(messages=USER, **fields).to_sampling_params().max_tokens


def test_max_completion_tokens_is_honoured_and_wins_over_max_tokens():
    assert max_tokens(max_completion_tokens=5) == 5
    assert max_tokens(max_completion_tokens=5, max_tokens=50) == 5
    assert max_tokens(max_tokens=50, max_completion_tokens=7) == 7
    assert max_tokens(max_tokens=7) == 7
    assert max_tokens() is None  # the rest of the context, as vLLM


def test_a_zero_max_completion_tokens_is_refused_not_ignored():
    with pytest.raises(SamplingParamsError) as error:
        max_tokens(max_completion_tokens=0, max_tokens=50)
    assert error.value.param == "max_completion_tokens"


def test_unset_sampling_fields_take_the_openai_defaults():
    params = ChatCompletionRequest(messages=USER).to_sampling_params()
    assert (params.temperature, params.top_p, params.top_k, params.min_p, params.n) == (1.0, 1.0, 0, 0.0, 1)
