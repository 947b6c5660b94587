"""`/v1/completions`: text prompts (no chat template), as OpenAI's legacy API and vLLM serve them.

A prompt is a string, a list of token ids, or a list of either (one engine request each; choice
`index` is prompt x n + i); an empty one is the start of a document (`<s>`). `echo` puts the
prompt's text before the completion; `logprobs: k` gives each generated token's logprob and the top
k, in the legacy shape, with `text_offset` where each token's text begins in the choice's text;
with `echo`, the prompt's tokens come first, each with its logprob given the ones before (None for
the first), as vLLM gives them. `max_tokens: 0` returns no generated text (with `echo`, the prompt
and its logprobs): the engine runs one step for the prompt's logprobs and its token is dropped, as
vLLM does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, Field, StrictInt, field_validator
from starlette.responses import Response

from monovl.engine.detokenizer import text_offsets
from monovl.engine.inputs import PromptInputs
from monovl.engine.outputs import RequestOutput, TokenLogprob
from monovl.engine.sampling_params import SamplingParams, SamplingParamsError
from monovl.preprocessing.tokenizer import Tokenizer
from monovl.server.echo_json import echo_response
from monovl.server.errors import APIError, bad_request, error_event
from monovl.server.generation import Tally, check, check_model, compile_constraint, outputs, token_text
from monovl.server.protocol import PromptTokensDetails, SamplingRequest, Usage
from monovl.server.state import ServerState
from monovl.server.structured_outputs import requested_constraint
from monovl.server.tools import ToolMode

MAX_PROMPTS = 64


class CompletionRequest(SamplingRequest):
    # Token ids before strings: a long list of ids must not be tried (and fail item by item) as strings.
    # No prompt (or null) is OpenAI's default: the start of a document, here the tokenizer's <s>.
    prompt: str | list[StrictInt] | list[list[StrictInt]] | list[str] = Field(default="", union_mode="left_to_right")
    max_tokens: int | None = Field(default=None, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = None
    suffix: str | None = None

    @property
    def num_prompts(self) -> int:
        """Engine requests this asks for (before n)."""
        return len(_prompts(self))

    @field_validator("prompt", mode="before")
    @classmethod
    def _token_ids_are_integers(cls, prompt: object) -> object:
        """`[true]` or `[1.0]` is not token id 1: say so, rather than which union member failed. Too
        many prompts are refused before any is validated."""
        if not isinstance(prompt, list) or not prompt:
            return prompt
        if not all(isinstance(p, str | list) for p in prompt):
            _integers_only(prompt)
            return prompt
        if len(prompt) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        if len({type(p) for p in prompt}) > 1:
            raise ValueError("a list of prompts holds strings or lists of token ids, not both")
        for k, item in enumerate(prompt):
            if isinstance(item, list):
                _integers_only(item, f"item {k}[", "]")
        return prompt


def _integers_only(ids: list, before: str = "item ", after: str = "") -> None:
    for k, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValueError(
                "must be a string, a list of token ids (integers) or a list of either; "
                f"{before}{k}{after} is {type(token).__name__}"
            )


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


@dataclass(frozen=True)
class PreparedCompletion:
    prompts: list[PromptInputs]
    params: SamplingParams
    generates: bool = True  # max_tokens 0: the engine's one token is dropped
    prompt_offsets: list[list[int]] | None = None  # each prompt token's text_offset, for echo with logprobs


def _prompts(request: CompletionRequest) -> list[str | list[int]]:
    prompt = request.prompt
    if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt):
        return [prompt]  # one string, or one list of token ids ([] included)
    return list(prompt)


def check_token_ids(tokenizer: Tokenizer, ids: list[int], param: str) -> None:
    outside = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if outside:
        raise bad_request(f"token ids outside the vocabulary [0, {tokenizer.vocab_size}): {outside[:5]}", param)


def tokenize_prompt(tokenizer: Tokenizer, prompt: str | list[int], img_context_id: int) -> PromptInputs:
    """Runs in the worker pool. A text completion has no images, so no image token may be in it."""
    if isinstance(prompt, str):
        ids, text = tokenizer.encode(prompt), prompt
    else:
        check_token_ids(tokenizer, prompt, "prompt")
        # No ids: the start of a document, as an empty string is. `echo` shows text, not <s>.
        ids, text = list(prompt) or [tokenizer.bos_id], tokenizer.decode(prompt)
    if img_context_id in ids:
        raise bad_request("a text prompt cannot hold image tokens; send images to /v1/chat/completions", "prompt")
    if not ids:
        raise bad_request("the prompt has no tokens", "prompt")
    return PromptInputs(text, ids, [], [])


def prompt_offsets(tokenizer: Tokenizer, prompt: str | list[int], inputs: PromptInputs) -> list[int]:
    """Runs in the worker pool: where each of the prompt's tokens begins in its echoed text."""
    if isinstance(prompt, str):
        return tokenizer.offsets(prompt)
    return text_offsets(tokenizer, inputs.token_ids)  # as tokenize_prompt decodes its echo


async def prepare(state: ServerState, request: CompletionRequest) -> PreparedCompletion:
    check_model(state, request)
    if request.suffix:
        raise bad_request("suffix is not supported by this model", "suffix")
    if request.best_of is not None and request.best_of != request.n:
        raise bad_request("best_of other than n is not supported", "best_of")
    constraint = requested_constraint(request, ToolMode("none"))
    # Without max_tokens a text completion takes SamplingParams' default, OpenAI's (a chat takes the context's rest).
    max_tokens = SamplingParams.max_tokens if request.max_tokens is None else max(request.max_tokens, 1)
    try:
        params = request.sampling_params(max_tokens, request.logprobs, constraint and constraint.output)
    except SamplingParamsError as e:
        raise bad_request(str(e), e.param) from None
    if request.echo and request.logprobs is not None:
        params = replace(params, prompt_logprobs=request.logprobs)
    limits = state.engine.info.limits
    check(limits, None, params, "prompt")
    texts = _prompts(request)
    chars = sum(len(t) for t in texts if isinstance(t, str))
    if chars > state.max_prompt_chars:
        raise bad_request(
            f"the prompt holds {chars} characters; at most {state.max_prompt_chars} fit in this model's context",
            "prompt",
            "context_length_exceeded",
        )
    await compile_constraint(state, params, constraint)
    tokenizer, img_context = state.preprocessor.tokenizer, state.preprocessor.img_context_id
    prompts = [await state.pool.run(tokenize_prompt, tokenizer, t, img_context) for t in texts]
    for prompt in prompts:
        check(limits, prompt.num_tokens, params, "prompt")
    offsets = None
    if params.prompt_logprobs is not None:
        _check_echo_size(state, sum(p.num_tokens for p in prompts), params)
        offsets = [await state.pool.run(prompt_offsets, tokenizer, t, p) for t, p in zip(texts, prompts, strict=True)]
    return PreparedCompletion(prompts, params, request.max_tokens != 0, offsets)


def _check_echo_size(state: ServerState, num_prompt_tokens: int, params: SamplingParams) -> None:
    """An echo repeats its prompt's logprobs in every choice: their count bounds the response."""
    entries = num_prompt_tokens * (params.prompt_logprobs + 1) * params.n
    limit = state.settings.max_echo_logprobs
    if entries > limit:
        raise bad_request(
            f"echo with logprobs {params.prompt_logprobs} and n {params.n} over {num_prompt_tokens} prompt tokens "
            f"would return {entries} prompt logprobs; at most {limit} (the server's --max-echo-logprobs)",
            "logprobs",
            "too_many_logprobs",
        )


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def legacy_logprobs(
    tokenizer: Tokenizer, entries: list[tuple[int, TokenLogprob | None]], offsets: list[int]
) -> CompletionLogprobs:
    """`entries`: (token id, its logprob or None); `offsets`: where each token's text begins."""
    tokens, values, tops = [], [], []
    for token_id, lp in entries:
        tokens.append(token_text(tokenizer, token_id)[0])
        values.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else {token_text(tokenizer, i)[0]: v for i, v in lp.top_logprobs})
    return CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets)


async def _one_prompt(
    state: ServerState, request_id: str, k: int, prompt: PromptInputs, params: SamplingParams
) -> AsyncIterator[tuple[int, object]]:
    """(choice index, RequestOutput) for one prompt's n completions, then (k, Tally) at the end."""
    tally = Tally()
    async for output in outputs(state, f"{request_id}-{k}", prompt, params):
        tally.see(output, state)
        yield k * params.n + output.index, output
    yield -1, tally


async def _merged(
    state: ServerState, request_id: str, prepared: PreparedCompletion
) -> AsyncIterator[tuple[int, object]]:
    """The outputs of every prompt as they come (the prompts run side by side in the engine)."""
    streams = [_one_prompt(state, request_id, k, p, prepared.params) for k, p in enumerate(prepared.prompts)]
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except Exception as error:  # handed to the consumer, which raises it
            await queue.put((-2, error))
            return
        await queue.put((-3, None))

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        done = 0
        while done < len(tasks):
            index, item = await queue.get()
            if index == -2:
                raise item  # type: ignore[misc]
            if index == -3:
                done += 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


def _usage(tallies: list[Tally], generates: bool) -> Usage:
    prompt = sum(t.prompt_tokens for t in tallies)
    completion = sum(sum(t.completion_tokens.values()) for t in tallies) if generates else 0
    cached = PromptTokensDetails(cached_tokens=sum(t.cached_tokens for t in tallies))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=cached,
    )


def _finish_reason(prepared: PreparedCompletion, output: RequestOutput) -> str | None:
    if not output.finished:
        return None
    return output.finish_reason if prepared.generates else "length"


def _echo_logprobs(
    tokenizer: Tokenizer, prepared: PreparedCompletion, k: int, logprobs: list[TokenLogprob | None]
) -> CompletionLogprobs:
    prompt = prepared.prompts[k]
    assert prepared.prompt_offsets is not None
    entries = list(zip(prompt.token_ids, logprobs, strict=True))
    return legacy_logprobs(tokenizer, entries, prepared.prompt_offsets[k])


async def complete(
    state: ServerState, request_id: str, prepared: PreparedCompletion, echo: bool
) -> Completion | Response:
    params, n = prepared.params, prepared.params.n
    tokenizer = state.preprocessor.tokenizer
    count = len(prepared.prompts) * n
    texts = {i: prepared.prompts[i // n].prompt if echo else "" for i in range(count)}
    logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(count)}
    offsets: dict[int, list[int]] = {i: [] for i in range(count)}  # in the generated text
    prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}  # by prompt
    reasons: dict[int, str | None] = {}
    tallies: list[Tally] = []
    async for index, item in _merged(state, request_id, prepared):
        if isinstance(item, Tally):
            tallies.append(item)
            continue
        if item.prompt_logprobs is not None:
            prompt_logprobs[index // n] = item.prompt_logprobs
        if prepared.generates:
            texts[index] += item.new_text
            logprobs[index] += item.new_logprobs
            offsets[index] += item.new_text_offsets
        if item.finished:
            if item.finish_reason == "error":
                raise APIError(500, item.error or "internal error", type="server_error")
            reasons[index] = _finish_reason(prepared, item)
    own: dict[int, CompletionLogprobs] = {}
    if params.logprobs is not None:
        for i in range(count):
            start = len(prepared.prompts[i // n].prompt) if echo else 0
            entries = [(lp.token_id, lp) for lp in logprobs[i]]
            own[i] = legacy_logprobs(tokenizer, entries, [start + offset for offset in offsets[i]])
    echoes = echo and params.logprobs is not None
    choices = [
        CompletionChoice(index=i, text=texts[i], logprobs=None if echoes else own.get(i), finish_reason=reasons.get(i))
        for i in range(count)
    ]
    usage = _usage(tallies, prepared.generates)
    completion = Completion(id=request_id, model=state.settings.served_model_name, choices=choices, usage=usage)
    if not echoes:
        return completion
    # made once for all of a prompt's choices
    prompts = {k: _echo_logprobs(tokenizer, prepared, k, prompt_logprobs[k]) for k in range(len(prepared.prompts))}
    return echo_response(completion, prompts, own, n)


async def stream(
    state: ServerState, request_id: str, prepared: PreparedCompletion, request: CompletionRequest
) -> AsyncIterator[str]:
    params, n = prepared.params, prepared.params.n
    tokenizer = state.preprocessor.tokenizer
    created = int(time.time())
    model = state.settings.served_model_name
    count = len(prepared.prompts) * n
    # where each choice's generated text begins in the choice's text
    start = {i: len(prepared.prompts[i // n].prompt) if request.echo else 0 for i in range(count)}
    tallies: list[Tally] = []

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        body = Completion(id=request_id, created=created, model=model, choices=choices, usage=usage)
        # OpenAI's completion chunk has no null usage: the field is there only on the last chunk.
        return f"data: {body.model_dump_json(exclude=None if usage is not None else {'usage'})}\n\n"

    def echoed(k: int, prompt_lps: list[TokenLogprob | None] | None) -> list[str]:
        """The echo of prompt k for each of its choices (with its logprobs when asked for)."""
        text = prepared.prompts[k].prompt
        lp = None if prompt_lps is None else _echo_logprobs(tokenizer, prepared, k, prompt_lps)
        return [chunk([CompletionChoice(index=i, text=text, logprobs=lp)]) for i in range(k * n, (k + 1) * n)]

    # With prompt logprobs, a prompt's echo waits for them (they come with completion 0's first output),
    # and so do its choices' outputs.
    waits_for_logprobs = request.echo and params.prompt_logprobs is not None
    held: dict[int, list] = {k: [] for k in range(len(prepared.prompts))} if waits_for_logprobs else {}
    if request.echo and not waits_for_logprobs:
        for k in range(len(prepared.prompts)):
            for event in echoed(k, None):
                yield event

    def events(index: int, item: RequestOutput) -> list[str]:
        new_logprobs = item.new_logprobs if prepared.generates else []
        text = item.new_text if prepared.generates else ""
        if not (text or new_logprobs or item.finished):
            return []
        lp = None
        if params.logprobs is not None:
            entries = [(entry.token_id, entry) for entry in new_logprobs]
            lp = legacy_logprobs(tokenizer, entries, [start[index] + offset for offset in item.new_text_offsets])
        choice = CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=_finish_reason(prepared, item))
        return [chunk([choice])]

    try:
        async for index, item in _merged(state, request_id, prepared):
            if isinstance(item, Tally):
                tallies.append(item)
                continue
            if item.finished and item.finish_reason == "error":
                yield error_event(APIError(500, item.error or "internal error", "server_error"))
                break
            k = index // n
            if k in held:
                if item.prompt_logprobs is None:
                    held[k].append((index, item))
                    continue
                waiting = held.pop(k)
                for event in [*echoed(k, item.prompt_logprobs), *(e for i, it in waiting for e in events(i, it))]:
                    yield event
            for event in events(index, item):
                yield event
    except APIError as e:
        yield error_event(e)
    if request.include_usage:
        yield chunk([], _usage(tallies, prepared.generates))
    yield "data: [DONE]\n\n"
