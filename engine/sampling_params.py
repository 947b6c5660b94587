"""How one request wants its tokens chosen and when it stops; validated once, at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from monovl.engine.structured_output import StructuredOutput

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class SamplingParamsError(ValueError):
    """A parameter out of range; `param` names it as the OpenAI API does."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) means no limit
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # when set, only `stop_token_ids` and `stop` end the request
    max_tokens: int | None = 16  # OpenAI's for text completions; None: the rest of the context
    logprobs: int | None = None  # None: no logprobs; k: the chosen token and the top k
    # None: none; k: each prompt token's logprob given the tokens before it, and the top k (vLLM's)
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured_output: StructuredOutput | None = None  # a grammar the output must match

    def __post_init__(self) -> None:
        checks = [
            ("n", 1 <= self.n <= 128, "must be between 1 and 128"),
            ("temperature", 0.0 <= self.temperature <= 2.0, "must be between 0 and 2"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("top_k", self.top_k >= -1, "must be -1, 0 (no limit) or a positive count"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be between 0 and 1"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "must be between -2 and 2"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "must be between -2 and 2"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "must be in (0, 10]"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "must be at least 1"),
            ("seed", self.seed is None or INT64_MIN <= self.seed <= INT64_MAX, "must fit in a signed 64-bit integer"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "must be between 0 and 20"),
            (
                "prompt_logprobs",
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
                "must be between 0 and 20",
            ),
            ("stop", len(self.stop) <= 4 and all(self.stop), "at most 4 non-empty strings"),
            ("logit_bias", all(-100 <= v <= 100 for v in self.logit_bias.values()), "values must be in [-100, 100]"),
        ]
        for param, ok, message in checks:
            if not ok:
                raise SamplingParamsError(param, f"{param} {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def top_k_limit(self) -> int:
        return self.top_k if self.top_k > 0 else 0

    def stop_ids(self, default: tuple[int, ...]) -> frozenset[int]:
        """The token ids that end a completion: `stop_token_ids`, and the model's `default` (its
        template's and generation_config's) unless `ignore_eos`."""
        return frozenset(self.stop_token_ids) | (frozenset() if self.ignore_eos else frozenset(default))
