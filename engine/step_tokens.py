"""How many tokens each engine step ran, as a histogram (vLLM's `iteration_tokens_total`): small
steps under load say the batch is not filling; the server exports it from the engine's stats."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (inclusive), vLLM's: powers of two up to the largest step budgets.
STEP_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class StepTokens:
    def __init__(self) -> None:
        self.counts = [0] * (len(STEP_TOKEN_BUCKETS) + 1)  # the last: above every bound
        self.total = 0

    def observe(self, tokens: int) -> None:
        self.counts[bisect_left(STEP_TOKEN_BUCKETS, tokens)] += 1
        self.total += tokens
