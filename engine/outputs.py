"""What the engine emits per request and step; the server streams these."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]]  # the most likely tokens and their logprobs, best first


@dataclass(frozen=True)
class RequestTimings:
    """Seconds a finished completion spent waiting, in prefill (to its first token) and decoding."""

    queued: float
    prefill: float
    decode: float


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    index: int  # which of the request's n completions
    new_token_ids: list[int]
    new_text: str
    new_logprobs: list[TokenLogprob]
    finished: bool
    finish_reason: str | None  # "stop", "length", "abort" or "error"
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    error: str | None = None
    # With the first output of completion 0 when asked for: one entry a prompt token, None for the first.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # With the last output; an engine built with detokenize=False sends them with the first too, for
    # the OutputProcessor that may finish the completion on a stop string.
    timings: RequestTimings | None = None
    # Set by the OutputProcessor: where each new token's text begins in the completion's text (a
    # character split over byte pieces begins where its first byte does).
    new_text_offsets: tuple[int, ...] = ()
