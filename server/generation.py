"""What the chat and text completion endpoints share: the engine's checks, the outputs of one
request as they come, and the tally of tokens and timings that becomes `usage` and metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from monovl.engine.inputs import PromptInputs
from monovl.engine.llm_engine import UNAVAILABLE, RequestError, RequestLimits
from monovl.engine.output_streams import EngineDeadError, EngineNotAnswering
from monovl.engine.outputs import RequestOutput
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.tokenizer import Tokenizer
from monovl.server.errors import APIError, bad_request
from monovl.server.protocol import PromptTokensDetails, Usage
from monovl.server.state import ServerState
from monovl.server.structured_outputs import Constraint

log = logging.getLogger(__name__)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# OpenAI fields this server cannot honour: a 400 naming them, not an answer that ignores them.
Unsupported = dict[str, tuple[Callable[[object], bool], str]]
UNSUPPORTED: Unsupported = {
    "audio": (lambda v: v is not None, "audio output is not supported by this model"),
    "modalities": (lambda v: v not in (None, ["text"]), 'this model answers in text only: modalities must be ["text"]'),
    "functions": (lambda v: v is not None, "functions is deprecated and not supported; send tools"),
    "function_call": (lambda v: v is not None, "function_call is deprecated and not supported; send tool_choice"),
    "web_search_options": (lambda v: v is not None, "web search is not available on this server"),
}


def check_model(state: ServerState, request: BaseModel, unsupported: Unsupported = UNSUPPORTED) -> None:
    """The model must be the one served; fields it cannot honour are refused, and fields the server
    does not know are named in the log (as vLLM does: clients send extras)."""
    model = getattr(request, "model", None)
    if model is not None and model != state.settings.served_model_name:
        raise APIError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
    extra = request.model_extra or {}
    for name, (refused, why) in unsupported.items():
        if name in extra and refused(extra[name]):
            raise bad_request(why, name, "unsupported_parameter")
    if extra:
        log.warning("fields present in the request but ignored: %s", sorted(extra)[:20])


async def compile_constraint(state: ServerState, params: SamplingParams, constraint: Constraint | None) -> None:
    """Compile the request's grammar in the engine (which finds it cached), holding no thread while it
    waits: a 400 naming the field that asked for it when it cannot be compiled (or not in time), a 503
    when the compiler is busy or the engine stops."""
    if constraint is None:
        return
    deadline = state.engine.info.grammar_wait_s
    try:
        await asyncio.wait_for(state.engine.compile_grammar(params), deadline)
    except RequestError as e:
        if e.code in UNAVAILABLE:
            raise APIError(503, str(e), "server_error", param=constraint.param, code=e.code) from None
        raise bad_request(str(e), constraint.param, e.code) from None
    except asyncio.TimeoutError:
        raise APIError(
            503,
            f"the constraint did not compile within {deadline:g} s; the server is busy, try again",
            "server_error",
            param=constraint.param,
            code="grammar_compiler_busy",
        ) from None
    except EngineDeadError:
        raise engine_dead() from None


def check(limits: RequestLimits, num_prompt_tokens: int | None, params: SamplingParams, prompt_param: str) -> None:
    """The engine's limits as a 400; a prompt too long for the context is named as `prompt_param`."""
    try:
        limits.check(num_prompt_tokens, params)
    except RequestError as e:
        raise bad_request(str(e), prompt_param if e.param == "messages" else e.param, e.code) from None


@dataclass
class Tally:
    """What the handler learns from the outputs: tokens, timings, finish reasons."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: dict[int, int] = field(default_factory=dict)

    def see(self, output: RequestOutput, state: ServerState) -> None:
        now = time.perf_counter()
        if output.index not in self.completion_tokens and output.index == 0:
            state.metrics.prompt_started(output)
        state.metrics.tokens_generated(len(output.new_token_ids))
        if output.new_token_ids:
            if self.first_token is None:
                self.first_token = now
                state.metrics.time_to_first_token.observe(now - self.started)
            elif self.last_token is not None:
                state.metrics.inter_token_latency.observe((now - self.last_token) / len(output.new_token_ids))
            self.last_token = now
        self.prompt_tokens, self.cached_tokens = output.num_prompt_tokens, output.num_cached_tokens
        self.completion_tokens[output.index] = output.num_output_tokens
        if output.finished:
            state.metrics.request_finished(output, now - self.started)

    def usage(self) -> Usage:
        completion = sum(self.completion_tokens.values())
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_tokens),
        )


def token_text(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    piece = tokenizer.id_to_piece(token_id)
    byte = _BYTE_PIECE.fullmatch(piece)
    if byte:
        raw = bytes([int(byte[1], 16)])
        return raw.decode("utf-8", errors="backslashreplace"), list(raw)
    text = piece.replace("\u2581", " ")
    return text, list(text.encode())


def engine_dead() -> APIError:
    return APIError(503, "the engine stopped; the server is restarting", "server_error", code="engine_dead")


async def outputs(
    state: ServerState, request_id: str, prompt: PromptInputs, params: SamplingParams
) -> AsyncIterator[RequestOutput]:
    finished = longest = 0
    state.metrics.request_admitted(params.n, params.max_tokens)
    try:
        async for output in state.engine.generate(request_id, prompt, params):
            finished += output.finished
            if output.finished:
                longest = max(longest, output.num_output_tokens)
                if finished == params.n:
                    state.metrics.request_completed(longest)
            yield output
    except RequestError as e:
        raise bad_request(str(e), e.param, e.code) from None
    except EngineDeadError:
        raise engine_dead() from None
    except EngineNotAnswering as e:
        raise APIError(503, str(e), "server_error", code="engine_not_answering") from None
    finally:
        if finished < params.n:  # the client left (or the server failed): the rest were aborted
            state.metrics.request_success.labels(state.metrics.model_name, "abort").inc(params.n - finished)
