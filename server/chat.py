"""`/v1/chat/completions`: wire request -> preprocessing (off the event loop) -> engine -> wire answer."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engine.async_engine import EngineDeadError
from engine.inputs import PromptInputs
from engine.llm_engine import RequestError
from engine.outputs import RequestOutput, TokenLogprob
from engine.sampling_params import SamplingParams, SamplingParamsError
from preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from preprocessing.image_decode import ImageError, ImageTooLarge
from preprocessing.processor import Preprocessor
from preprocessing.tokenizer import Tokenizer
from server.errors import APIError, bad_request, error_body
from server.image_urls import decode_data_url
from server.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageOut,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    PromptTokensDetails,
    TokenLogprobOut,
    TopLogprob,
    Usage,
)
from server.state import ServerState

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass
class Conversation:
    messages: list[ChatMessage]
    images: list[tuple[str, str]]  # (url, param path) in order


def to_conversation(request: ChatCompletionRequest, max_images: int, max_chars: int) -> Conversation:
    messages, images = [], []
    chars = 0
    for i, message in enumerate(request.messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None and role != "assistant":
            raise bad_request(f"messages[{i}].content is required for role {message.role}", f"messages[{i}].content")
        if content is None or isinstance(content, str):
            messages.append(ChatMessage.text(role, content or ""))
            chars += len(content or "")
            continue
        parts: list[TextPart | ImagePart] = []
        for j, part in enumerate(content):
            if part.type == "text":
                parts.append(TextPart(part.text))
                chars += len(part.text)
                continue
            if role != "user":
                raise bad_request("images are only allowed in user messages", f"messages[{i}].content[{j}]")
            images.append((part.image_url.url, f"messages[{i}].content[{j}].image_url"))
            parts.append(ImagePart(len(images) - 1))
        messages.append(ChatMessage(role, tuple(parts)))
    if len(images) > max_images:
        raise bad_request(
            f"{len(images)} images in one request; the limit is {max_images}", "messages", "too_many_images"
        )
    if chars > max_chars:
        raise bad_request(
            f"the messages hold {chars} characters of text; at most {max_chars} can fit in this model's context",
            "messages",
            "context_length_exceeded",
        )
    return Conversation(messages, images)


def preprocess(
    pre: Preprocessor, conversation: Conversation, images: list[bytes], max_tiles: int | None
) -> PromptInputs:
    """Runs in the worker pool: decode and tile every image, render and tokenize the prompt."""
    inputs = []
    for data, (_, param) in zip(images, conversation.images, strict=True):
        try:
            inputs.append(pre.load_image(data, max_tiles))
        except ImageTooLarge as e:
            raise APIError(413, str(e), param=param, code="image_too_large") from None
        except ImageError as e:
            raise bad_request(str(e), param, "invalid_image") from None
    try:
        return pre.process(conversation.messages, inputs)
    except ValueError as e:
        raise bad_request(str(e), "messages") from None


async def prepare(state: ServerState, request: ChatCompletionRequest) -> tuple[PromptInputs, SamplingParams]:
    """Everything that can refuse a request, cheapest first; the response starts only after it."""
    settings = state.settings
    if request.model is not None and request.model != settings.served_model_name:
        raise APIError(404, f"the model {request.model!r} does not exist", param="model", code="model_not_found")
    try:
        params = request.to_sampling_params()
    except SamplingParamsError as e:
        raise bad_request(str(e), e.param) from None
    engine = state.engine.engine
    _check(engine.check_request, 1, params)  # a prompt has a token at least: max_tokens past the context is out now
    conversation = to_conversation(request, settings.max_images_per_request, state.max_prompt_chars)
    started = time.perf_counter()
    images = [await image_bytes(state, url, param) for url, param in conversation.images]
    max_tiles = min(request.max_num_tiles or settings.max_image_tiles, settings.max_image_tiles)
    prompt = await state.pool.run(preprocess, state.preprocessor, conversation, images, max_tiles)
    if images:
        state.metrics.image_preprocess_seconds.observe(time.perf_counter() - started)
    _check(engine.check_request, prompt.num_tokens, params)
    return prompt, params


def _check(check_request, num_prompt_tokens: int, params: SamplingParams) -> None:
    try:
        check_request(num_prompt_tokens, params)
    except RequestError as e:
        raise bad_request(str(e), e.param, e.code) from None


async def image_bytes(state: ServerState, url: str, param: str) -> bytes:
    if url.startswith("data:"):  # base64 of megabytes is work: off the event loop too
        return await state.pool.run(decode_data_url, url, state.settings.max_image_bytes, param)
    if not url.lower().startswith(("http://", "https://")):
        raise bad_request("image URLs must be data: URLs (or http(s) when enabled)", param, "invalid_image_url")
    if state.remote_images is None:
        raise bad_request(
            "remote image URLs are disabled on this server (start it with --allow-remote-images); send a data: URL",
            param,
            "remote_images_disabled",
        )
    return await state.pool.run(state.remote_images.fetch, url, param)


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


def wire_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    content = []
    for lp in logprobs:
        text, raw = token_text(tokenizer, lp.token_id)
        top = [TopLogprob(token=(t := token_text(tokenizer, i))[0], logprob=v, bytes=t[1]) for i, v in lp.top_logprobs]
        content.append(TokenLogprobOut(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top))
    return ChoiceLogprobs(content=content)


async def complete(
    state: ServerState, request_id: str, prompt: PromptInputs, params: SamplingParams, wants_logprobs: bool
) -> ChatCompletion:
    tally = Tally()
    texts: dict[int, list[str]] = {i: [] for i in range(params.n)}
    logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(params.n)}
    reasons: dict[int, str | None] = {}
    async for output in _outputs(state, request_id, prompt, params):
        tally.see(output, state)
        texts[output.index].append(output.new_text)
        logprobs[output.index] += output.new_logprobs
        if output.finished:
            if output.finish_reason == "error":
                raise APIError(500, output.error or "internal error", type="server_error")
            reasons[output.index] = output.finish_reason
    tokenizer = state.preprocessor.tokenizer
    choices = [
        Choice(
            index=i,
            message=ChatMessageOut(content="".join(texts[i])),
            logprobs=wire_logprobs(tokenizer, logprobs[i]) if wants_logprobs else None,
            finish_reason=reasons.get(i),
        )
        for i in range(params.n)
    ]
    return ChatCompletion(id=request_id, model=state.settings.served_model_name, choices=choices, usage=tally.usage())


async def stream(
    state: ServerState, request_id: str, prompt: PromptInputs, params: SamplingParams, request: ChatCompletionRequest
) -> AsyncIterator[str]:
    tally = Tally()
    created = int(time.time())
    model = state.settings.served_model_name
    tokenizer = state.preprocessor.tokenizer

    with_usage = bool(request.stream_options and request.stream_options.include_usage)

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage)
        # As OpenAI: `usage` appears (null until the last chunk) only when include_usage is set.
        return f"data: {body.model_dump_json(exclude={'usage'} if not with_usage else None)}\n\n"

    for i in range(params.n):
        yield chunk([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    try:
        async for output in _outputs(state, request_id, prompt, params):
            tally.see(output, state)
            if output.new_text or output.new_logprobs:
                lp = wire_logprobs(tokenizer, output.new_logprobs) if request.logprobs else None
                yield chunk([ChunkChoice(index=output.index, delta=DeltaMessage(content=output.new_text), logprobs=lp)])
            if output.finished:
                if output.finish_reason == "error":
                    yield error_event(APIError(500, output.error or "internal error", "server_error"))
                    break
                yield chunk([ChunkChoice(index=output.index, delta=DeltaMessage(), finish_reason=output.finish_reason)])
    except APIError as e:
        yield error_event(e)
    if with_usage:
        yield chunk([], tally.usage())
    yield "data: [DONE]\n\n"


def error_event(error: APIError) -> str:
    return f"data: {json.dumps(error_body(error.message, error.type, error.param, error.code))}\n\n"


async def _outputs(
    state: ServerState, request_id: str, prompt: PromptInputs, params: SamplingParams
) -> AsyncIterator[RequestOutput]:
    finished = 0
    try:
        async for output in state.engine.generate(request_id, prompt, params):
            finished += output.finished
            yield output
    except RequestError as e:
        raise bad_request(str(e), e.param, e.code) from None
    except EngineDeadError:
        raise APIError(
            503, "the engine stopped; the server is restarting", "server_error", code="engine_dead"
        ) from None
    finally:
        if finished < params.n:  # the client left (or the server failed): the rest were aborted
            state.metrics.request_success.labels(state.metrics.model_name, "abort").inc(params.n - finished)
