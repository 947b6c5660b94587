"""Continuous batching: which requests run this step, and how many of their tokens.

Running requests go first (a decode is one token; a partly prefilled prompt continues with its
next chunk), then waiting requests in arrival order while the token budget, `max_num_seqs` and the
block pool allow. When the pool cannot hold a running request's next tokens, the newest running
request is preempted: its blocks are freed and it goes back to the front of the queue, to be
recomputed later (its full blocks usually come back from the prefix cache).

While other requests run or wait, no request takes more than `long_prefill_token_threshold`
tokens of a step, so a long prompt leaves budget to the others in every step (alone, it takes the
whole budget); and at most `max_num_partial_prefills` long prompts (more uncached tokens than
the threshold) prefill at once: a short prompt that arrives behind a waiting long one goes first.
Both are vLLM's scheduler flags of the same names. While other requests run or wait, long
prompts' chunks get half of the engine's time (`step_took`), so the others' tokens keep coming.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.block_pool import BlockPool
from engine.request import Request, RequestStatus


@dataclass(frozen=True)
class ScheduledChunk:
    request: Request
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the request's tokens, so a token is sampled."""
        return self.request.num_computed_tokens + self.num_tokens == self.request.num_tokens


class Scheduler:
    def __init__(
        self,
        block_pool: BlockPool,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        rope_seed: Callable[[Request], bytes],
        long_prefill_token_threshold: int | None = None,
        max_num_partial_prefills: int = 1,
    ) -> None:
        self.block_pool = block_pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.rope_seed = rope_seed
        self.long_prefill_token_threshold = long_prefill_token_threshold or max_num_batched_tokens
        self.max_num_partial_prefills = max_num_partial_prefills
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.unschedulable: list[Request] = []  # too large for the whole pool; the engine fails them
        self._contended = False  # whether this step has more than one request to serve
        self._long_chunk = False  # whether a long prompt's chunk is in this step
        self._owed_to_others = 0.0  # seconds of steps without a long chunk owed to the other requests
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def remove(self, request: Request, keep_cached: bool = True) -> None:
        """Take a finished or aborted request out of the queues and free its blocks."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.block_pool.free_request(request, keep_cached)

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted = False
        self._contended = len(self.running) + len(self.waiting) > 1
        pause_long = self._contended and self._owed_to_others > 0
        self._long_chunk = False
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            if self._is_long_prefill(request):
                if pause_long:
                    continue
                self._long_chunk = True
            num_tokens = self._chunk_size(request, budget)
            while not self.block_pool.allocate(request, num_tokens):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is request:
                    if not self.running:  # alone and still too big: it can never finish
                        self.unschedulable.append(self.waiting.popleft())
                    break
            if request.status is RequestStatus.RUNNING:
                chunks.append(self._scheduled(request, num_tokens))
                budget -= num_tokens
        # After a preemption the pool is full: admitting new work would only preempt again.
        if not preempted:
            self._admit(chunks, budget)
        if pause_long and not chunks:  # nobody else could run after all: the long prompt goes on
            self._owed_to_others = 0.0
            return self.schedule()
        return chunks

    def step_took(self, seconds: float) -> None:
        """The engine's report of the step just run. A step with a long prompt's chunk costs many
        decode steps (the chunk attends to all of the prompt so far), so while other requests run or
        wait, the next long chunk waits until steps without one have taken as long: half the time
        each, and a request that arrives during a long chunk is served before the next one."""
        if self._long_chunk:
            self._owed_to_others = seconds
        else:
            self._owed_to_others = max(0.0, self._owed_to_others - seconds)

    def _admit(self, chunks: list[ScheduledChunk], budget: int) -> None:
        """Waiting requests in arrival order, while the budget, max_num_seqs and the pool allow."""
        long_prefills = sum(self._is_long_prefill(r) for r in self.running)
        for request in list(self.waiting):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                return
            if not request.block_table:
                self.block_pool.use_cached_prefix(request, self.rope_seed(request))
            is_long = self._is_long_prefill(request)
            if is_long and long_prefills >= self.max_num_partial_prefills:
                self._forget_blocks(request)  # it waits its turn among the long ones
                continue
            num_tokens = self._chunk_size(request, budget)
            if not self.block_pool.allocate(request, num_tokens):
                # Waiting requests hold no blocks, so others can always make progress.
                self._forget_blocks(request)
                if not self.running:
                    self.waiting.remove(request)
                    self.unschedulable.append(request)
                    continue
                return
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._scheduled(request, num_tokens))
            budget -= num_tokens
            long_prefills += is_long

    def _chunk_size(self, request: Request, budget: int) -> int:
        cap = self.long_prefill_token_threshold if self._contended else budget
        return min(request.num_tokens - request.num_computed_tokens, budget, cap)

    def _is_long_prefill(self, request: Request) -> bool:
        return request.num_tokens - request.num_computed_tokens > self.long_prefill_token_threshold

    def _forget_blocks(self, request: Request) -> None:
        self.block_pool.free_request(request)
        request.num_computed_tokens = 0

    def _scheduled(self, request: Request, num_tokens: int) -> ScheduledChunk:
        # Hashes are registered now, before the forward, so a request admitted later in this same
        # step (another of n completions, a repeated prompt) reuses these blocks: every layer writes
        # the step's K/V before any request attends.
        self.block_pool.commit_full_blocks(request, request.num_computed_tokens + num_tokens, self.rope_seed(request))
        return ScheduledChunk(request, num_tokens)

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.block_pool.free_request(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        self.num_preemptions += 1
