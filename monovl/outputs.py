"""What `LLM.chat` and `LLM.generate` return, shaped as vLLM's `RequestOutput`: a request's prompt
and its ids, and a `CompletionOutput` for each of its `n` completions."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    logprob: float
    rank: int | None  # 1: the most likely token; None: the chosen token, outside the top ones
    decoded_token: str | None = None


# One entry a generated token: its id's and the top alternatives' logprobs, by token id.
SampleLogprobs = list[dict[int, Logprob]]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None  # "stop" or "length"


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    num_cached_tokens: int = 0
    finished: bool = False
