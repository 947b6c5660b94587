"""Continuous batching: which requests run this step, and how many of their tokens.

Running requests go first (a decode is one token; a partly prefilled prompt continues with its
next chunk), then waiting requests in arrival order while the token budget, `max_num_seqs` and the
block pool allow. When the pool cannot hold a running request's next tokens, the newest running
request is preempted: its blocks are freed and it goes back to the front of the queue, to be
recomputed later (its full blocks usually come back from the prefix cache).

A prompt with more uncached tokens than `long_prefill_token_threshold` is long. Short work
(decodes, short prompts, running or waiting) is scheduled first and long prefills take the budget
left, at most `max_num_partial_prefills` of them at once, each at most the threshold a step while
other requests run or wait; both flags are vLLM's. And while others run, a long prefill whose
chunks slow steps down by more than LONG_CHUNK_SLOWDOWN gets half of the engine's time
(`step_took`), so the others' tokens keep coming.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from monovl.engine.block_pool import BlockPool
from monovl.engine.request import Request, RequestStatus


@dataclass(frozen=True)
class ScheduledChunk:
    request: Request
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the request's tokens, so a token is sampled."""
        return self.request.num_computed_tokens + self.num_tokens == self.request.num_tokens


# A long prompt's chunk may make a step this many times slower than the steps without one, for free.
LONG_CHUNK_SLOWDOWN = 8


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
        self._short_step_s = 0.0  # recent duration of a step without a long chunk
        self._budget = max_num_batched_tokens  # tokens left in the step being scheduled
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
        self._budget = self.max_num_batched_tokens
        self._contended = len(self.running) + len(self.waiting) > 1
        self._long_chunk = False
        chunks: list[ScheduledChunk] = []
        deferred: list[Request] = []  # waiting long prompts, looked up once this step
        # Short work first (decodes, short prompts, running or waiting); long prefills take what is left.
        preempted = self._continue([r for r in self.running if not self._is_long_prefill(r)], chunks)
        # After a preemption the pool is full: admitting new work would only preempt again.
        if not preempted:
            self._admit(list(self.waiting), chunks, deferred)
        if not preempted and (not chunks or not self._contended or self._owed_to_others == 0):
            long_running = [r for r in self.running if self._is_long_prefill(r)]
            self._long_chunk = bool(long_running or deferred)
            if not self._continue(long_running, chunks):
                self._admit(deferred, chunks, None)
        for request in deferred:
            if request.status is RequestStatus.WAITING:
                self._forget_blocks(request)
        return chunks

    def step_took(self, seconds: float) -> None:
        """The engine's report of the step just run. A step with a long prompt's chunk can cost many
        decode steps (the chunk attends to all of the prompt so far); what it costs beyond
        LONG_CHUNK_SLOWDOWN steps without one, steps without a long chunk repay before the next long
        chunk, while others run: past that slowdown, a long prefill gets half of the engine's time."""
        if self._long_chunk:
            self._owed_to_others = max(0.0, seconds - LONG_CHUNK_SLOWDOWN * self._short_step_s)
        else:
            self._owed_to_others = max(0.0, self._owed_to_others - seconds)
            self._short_step_s = seconds if self._short_step_s == 0 else 0.8 * self._short_step_s + 0.2 * seconds

    def _continue(self, requests: list[Request], chunks: list[ScheduledChunk]) -> bool:
        """Schedule running requests' next chunks; True if one had to preempt (the pool is full)."""
        preempted = False
        for request in requests:
            if self._budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_tokens = self._chunk_size(request, self._budget)
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
                self._budget -= num_tokens
        return preempted

    def _admit(self, candidates: list[Request], chunks: list[ScheduledChunk], deferred: list[Request] | None) -> None:
        """Waiting requests in arrival order while the budget, max_num_seqs and the pool allow. With
        `deferred`, long prompts are set aside into it; without, they are the candidates, admitted
        while fewer than max_num_partial_prefills long prompts prefill."""
        long_prefills = sum(self._is_long_prefill(r) for r in self.running)
        # A prompt whose next block another request is computing now (the n completions of one
        # request, a repeated prompt) waits for it, then finds it in the prefix cache.
        being_computed = {self._next_block(r) for r in self.running if r.num_computed_tokens < r.num_prompt_tokens}
        being_computed.discard(None)
        for request in candidates:
            if self._budget == 0 or len(self.running) >= self.max_num_seqs:
                return
            if deferred is None:  # looked up before this step's long chunks were scheduled: again
                self._forget_blocks(request)
            if not request.block_table and not request.wants_prompt_logprobs:
                self.block_pool.use_cached_prefix(request, self.rope_seed(request))
            if self._next_block(request) in being_computed:
                self._forget_blocks(request)
                continue
            is_long = self._is_long_prefill(request)
            if is_long and deferred is not None:
                deferred.append(request)
                continue
            if is_long and long_prefills >= self.max_num_partial_prefills:
                return  # it waits its turn among the long ones
            num_tokens = self._chunk_size(request, self._budget)
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
            if request.scheduled_time is None:  # the end of its queueing (a preempted one keeps it)
                request.scheduled_time = time.monotonic()
            self.running.append(request)
            chunks.append(self._scheduled(request, num_tokens))
            self._budget -= num_tokens
            long_prefills += is_long
            being_computed.add(self._next_block(request))

    def _next_block(self, request: Request) -> bytes | None:
        return self.block_pool.next_block_digest(request, self.rope_seed(request))

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
