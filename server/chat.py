"""`/v1/chat/completions`: wire request -> preprocessing (off the event loop) -> engine -> wire answer."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from monovl.engine.inputs import PromptInputs
from monovl.engine.outputs import TokenLogprob
from monovl.engine.sampling_params import SamplingParams, SamplingParamsError
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.image_decode import ImageError, ImageTooLarge
from monovl.preprocessing.processor import Preprocessor
from monovl.preprocessing.tokenizer import Tokenizer
from monovl.server.errors import APIError, bad_request, error_event
from monovl.server.generation import Tally, check, check_model, compile_constraint, outputs, token_text
from monovl.server.image_urls import decode_data_url
from monovl.server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageOut,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    RefusalContentPart,
    SystemMessage,
    TextContentPart,
    TokenLogprobOut,
    ToolMessage,
    TopLogprob,
    Usage,
)
from monovl.server.state import ServerState
from monovl.server.structured_outputs import requested_constraint
from monovl.server.tools import (
    ACTION_END,
    ACTION_START,
    PLUGIN,
    ChoiceReader,
    ToolMode,
    call_text,
    functions_prompt,
    tool_mode,
)

log = logging.getLogger(__name__)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # where the body has it, for errors
    max_tiles: int | None = None  # the part's own cap: 1 for `detail: "low"`


@dataclass
class Conversation:
    messages: list[ChatMessage]
    images: list[ImageRef]  # in order


def image_ref(url: str, detail: str | None, param: str) -> ImageRef:
    """`detail` as OpenAI's: "low" is one 448 px tile (256 tokens, the model card's `max_num=1`),
    "high" and "auto" the usual tiling."""
    return ImageRef(url, param, 1 if detail == "low" else None)


def to_conversation(request: ChatCompletionRequest, mode: ToolMode, max_images: int, max_chars: int) -> Conversation:
    messages: list[ChatMessage] = []
    images: list[tuple[str, str]] = []
    for i, message in enumerate(request.messages):
        content = message.content
        if isinstance(message, ToolMessage):
            messages.append(ChatMessage.text("environment", _text(content), name=PLUGIN))
        elif isinstance(message, SystemMessage):
            messages.append(ChatMessage.text("system", _text(content)))
        elif isinstance(message, AssistantMessage):
            calls = [call_text(c.function.name, c.function.arguments) for c in message.tool_calls or []]
            said = _text(content) or message.refusal or ""  # a refusal is what the assistant said
            messages.append(ChatMessage.text("assistant", said + "".join(calls)))
        elif isinstance(content, str):
            messages.append(ChatMessage.text("user", content))
        else:
            parts: list[TextPart | ImagePart] = []
            for j, part in enumerate(content):
                if part.type == "text":
                    parts.append(TextPart(part.text))
                    continue
                image = part.image_url
                images.append(image_ref(image.url, image.detail, f"messages[{i}].content[{j}].image_url"))
                parts.append(ImagePart(len(images) - 1))
            messages.append(ChatMessage("user", tuple(parts)))
    if request.tools and mode.kind != "none":  # after the conversation's own system turn, as InternLM's format
        at = 1 if messages and messages[0].role == "system" else 0
        messages.insert(at, ChatMessage.text("system", functions_prompt(request.tools), name=PLUGIN))
    if len(images) > max_images:
        raise bad_request(
            f"{len(images)} images in one request; the limit is {max_images}", "messages", "too_many_images"
        )
    chars = sum(len(part.text) for m in messages for part in m.parts if isinstance(part, TextPart))
    if chars > max_chars:
        raise bad_request(
            f"the messages hold {chars} characters of text; at most {max_chars} can fit in this model's context",
            "messages",
            "context_length_exceeded",
        )
    return Conversation(messages, images)


def _text(content: str | list[TextContentPart | RefusalContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text if isinstance(part, TextContentPart) else part.refusal for part in content)


def preprocess(
    pre: Preprocessor,
    conversation: Conversation,
    images: list[bytes],
    max_tiles: int | None,
    tile_limit: int | None = None,
    add_generation_prompt: bool = True,
) -> PromptInputs:
    """Runs in the worker pool: decode and tile every image, render and tokenize the prompt."""
    inputs = []
    for data, ref in zip(images, conversation.images, strict=True):
        asked = min((cap for cap in (max_tiles, ref.max_tiles) if cap), default=None)
        try:
            inputs.append(pre.load_image(data, asked, tile_limit))
        except ImageTooLarge as e:
            raise APIError(413, str(e), param=ref.param, code="image_too_large") from None
        except ImageError as e:
            raise bad_request(str(e), ref.param, "invalid_image") from None
    try:
        return pre.process(conversation.messages, inputs, add_generation_prompt)
    except ValueError as e:
        raise bad_request(str(e), "messages") from None


@dataclass(frozen=True)
class Prepared:
    """A request the engine can run: its prompt, sampling parameters and what reads its output."""

    prompt: PromptInputs
    params: SamplingParams
    tools: ToolMode


async def prepare(state: ServerState, request: ChatCompletionRequest) -> Prepared:
    """Everything that can refuse a request, cheapest first; the response starts only after it."""
    settings = state.settings
    check_model(state, request)
    mode = tool_mode(request)
    constraint = requested_constraint(request, mode)
    try:
        params = request.to_sampling_params(constraint and constraint.output)
    except SamplingParamsError as e:
        raise bad_request(str(e), e.param) from None
    if mode.kind == "auto":  # the call markers are special tokens: the reader needs to see them
        params = replace(params, skip_special_tokens=False)
    limits = state.engine.info.limits
    check(limits, None, params, "messages")  # max_tokens past the context is out before any preprocessing
    conversation = to_conversation(request, mode, settings.max_images_per_request, state.max_prompt_chars)
    await compile_constraint(state, params, constraint)
    prompt = await build_prompt(state, conversation, request.max_num_tiles)
    check(limits, prompt.num_tokens, params, "messages")
    return Prepared(prompt, params, mode)


async def build_prompt(
    state: ServerState, conversation: Conversation, max_num_tiles: int | None, add_generation_prompt: bool = True
) -> PromptInputs:
    """The conversation's images fetched and decoded, its prompt rendered and tokenized, off the loop:
    in the image lane if it has images, else in the text lane, so a text-only chat never waits
    behind another request's image work."""
    settings = state.settings
    started = time.perf_counter()
    images = [await image_bytes(state, ref.url, ref.param) for ref in conversation.images]
    pre = state.preprocessor
    limit = settings.max_image_tiles
    lane = state.image_pool if images else state.pool
    prompt = await lane.run(preprocess, pre, conversation, images, max_num_tiles, limit, add_generation_prompt)
    if images:
        state.metrics.image_preprocess_seconds.observe(time.perf_counter() - started)
    return prompt


async def image_bytes(state: ServerState, url: str, param: str) -> bytes:
    if url.startswith("data:"):  # base64 of megabytes is work: off the event loop too
        return await state.image_pool.run(decode_data_url, url, state.settings.max_image_bytes, param)
    if not url.lower().startswith(("http://", "https://")):
        raise bad_request("image URLs must be data: URLs (or http(s) when enabled)", param, "invalid_image_url")
    if state.remote_images is None:
        raise bad_request(
            "remote image URLs are disabled on this server (start it with --allow-remote-images); send a data: URL",
            param,
            "remote_images_disabled",
        )
    return await (state.fetch_pool or state.image_pool).run(state.remote_images.fetch, url, param)


def wire_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob]) -> ChoiceLogprobs:
    content = []
    for lp in logprobs:
        text, raw = token_text(tokenizer, lp.token_id)
        top = [TopLogprob(token=(t := token_text(tokenizer, i))[0], logprob=v, bytes=t[1]) for i, v in lp.top_logprobs]
        content.append(TokenLogprobOut(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top))
    return ChoiceLogprobs(content=content)


def reader(state: ServerState, mode: ToolMode) -> ChoiceReader:
    return ChoiceReader(mode, hidden_tokens(state.preprocessor.tokenizer) if mode.kind == "auto" else ())


@functools.cache
def hidden_tokens(tokenizer: Tokenizer) -> tuple[str, ...]:
    """Special tokens that auto tool mode decodes (to see the call markers) and the content drops."""
    shown = {ACTION_START, ACTION_END, PLUGIN}
    specials = [tokenizer.id_to_piece(i) for i in tokenizer.special_ids]
    return tuple(sorted({t for t in specials if t and t not in shown}, key=len, reverse=True))


async def complete(state: ServerState, request_id: str, prepared: Prepared, wants_logprobs: bool) -> ChatCompletion:
    params = prepared.params
    tally = Tally()
    readers = {i: reader(state, prepared.tools) for i in range(params.n)}
    logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(params.n)}
    reasons: dict[int, str | None] = {}
    async for output in outputs(state, request_id, prepared.prompt, params):
        tally.see(output, state)
        readers[output.index].feed(output.new_text)
        logprobs[output.index] += output.new_logprobs
        if output.finished:
            if output.finish_reason == "error":
                raise APIError(500, output.error or "internal error", type="server_error")
            _, reasons[output.index] = readers[output.index].finish(output.finish_reason)
    tokenizer = state.preprocessor.tokenizer
    choices = [
        Choice(
            index=i,
            message=ChatMessageOut(content=readers[i].content(), tool_calls=readers[i].calls),
            logprobs=wire_logprobs(tokenizer, logprobs[i]) if wants_logprobs else None,
            finish_reason=reasons.get(i),
        )
        for i in range(params.n)
    ]
    return ChatCompletion(id=request_id, model=state.settings.served_model_name, choices=choices, usage=tally.usage())


async def stream(
    state: ServerState, request_id: str, prepared: Prepared, request: ChatCompletionRequest
) -> AsyncIterator[str]:
    params = prepared.params
    tally = Tally()
    created = int(time.time())
    model = state.settings.served_model_name
    tokenizer = state.preprocessor.tokenizer
    readers = {i: reader(state, prepared.tools) for i in range(params.n)}

    with_usage = bool(request.stream_options and request.stream_options.include_usage)

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage)
        # As OpenAI: `usage` appears (null until the last chunk) only when include_usage is set.
        return f"data: {body.model_dump_json(exclude={'usage'} if not with_usage else None)}\n\n"

    for i in range(params.n):
        yield chunk([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
    try:
        async for output in outputs(state, request_id, prepared.prompt, params):
            tally.see(output, state)
            choice = readers[output.index]
            delta = choice.feed(output.new_text) if output.new_text else None
            if delta is not None or output.new_logprobs:
                lp = wire_logprobs(tokenizer, output.new_logprobs) if request.logprobs else None
                yield chunk([ChunkChoice(index=output.index, delta=delta or DeltaMessage(), logprobs=lp)])
            if output.finished:
                if output.finish_reason == "error":
                    yield error_event(APIError(500, output.error or "internal error", "server_error"))
                    break
                rest, reason = choice.finish(output.finish_reason)
                if rest is not None:
                    yield chunk([ChunkChoice(index=output.index, delta=rest)])
                yield chunk([ChunkChoice(index=output.index, delta=DeltaMessage(), finish_reason=reason)])
    except APIError as e:
        yield error_event(e)
    if with_usage:
        yield chunk([], tally.usage())
    yield "data: [DONE]\n\n"
