"""The engine's request: it owns its token ids, progress, blocks and output state."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from monovl.engine.inputs import PromptInputs
from monovl.engine.outputs import RequestTimings, TokenLogprob
from monovl.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    import xgrammar


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    index: int  # completion number among the request's n
    prompt: PromptInputs
    params: SamplingParams
    stop_token_ids: frozenset[int]
    generator: torch.Generator | None = None
    grammar: xgrammar.GrammarMatcher | None = None  # where the output is constrained, its matcher
    arrival_time: float = field(default_factory=time.monotonic)
    scheduled_time: float | None = None  # first scheduled: the end of its time waiting
    first_token_time: float | None = None  # its first token sampled: the end of its prefill
    status: RequestStatus = RequestStatus.WAITING
    token_ids: list[int] = field(default_factory=list)  # prompt, then outputs
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache when first scheduled
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of the full blocks
    new_logprobs: list[TokenLogprob] = field(default_factory=list)  # since the last output
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)  # by prompt position
    num_emitted_tokens: int = 0  # output tokens already reported
    finish_reason: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt.token_ids)

    @property
    def key(self) -> tuple[str, int]:
        return (self.request_id, self.index)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Completion 0 computes them (the others share its prompt); so every prompt token is
        computed, none found in the prefix cache."""
        return self.params.prompt_logprobs is not None and self.index == 0

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def timings(self) -> RequestTimings:
        now = time.monotonic()
        scheduled = self.scheduled_time or now
        first_token = self.first_token_time or now
        return RequestTimings(scheduled - self.arrival_time, first_token - scheduled, now - first_token)

    def finish(self, reason: str, error: str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.error = error
