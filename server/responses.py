"""`POST /v1/responses`: OpenAI's Responses API over the chat path.

A Responses request becomes the chat request of the same conversation (its instructions a system
turn, its items chat messages, a stored previous response's conversation before them), so it runs
the prompt a chat would, token for token, with the same checks, tools and structured outputs. The
answer is read by chat's `ChoiceReader` and written as output items: a `message` with its
`output_text`, and a `function_call` per call; streamed, as OpenAI's sequence of typed events.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import ValidationError

from monovl.server import chat
from monovl.server.errors import APIError, bad_request
from monovl.server.generation import Tally, Unsupported, check_model, outputs
from monovl.server.logs import request_failed
from monovl.server.protocol import ChatCompletionRequest, DeltaMessage
from monovl.server.response_store import StoredResponse
from monovl.server.responses_protocol import (
    FunctionCallItem,
    FunctionCallOut,
    FunctionCallOutputItem,
    FunctionToolChoice,
    IncompleteDetails,
    InputImage,
    InputTokensDetails,
    MessageItem,
    OutputMessage,
    OutputTextPart,
    Refusal,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextFormatJSONObject,
    TextFormatJSONSchema,
)
from monovl.server.state import ServerState
from monovl.server.streaming import Events
from monovl.server.tools import ChoiceReader

# A chat field's name in a refusal, as the Responses request names it.
_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}

_NO_LOGPROBS = "logprobs are not given on /v1/responses; use /v1/chat/completions"
# Responses fields this server cannot honour. Others it does not use (`reasoning`, `include` of
# outputs it never makes, `safety_identifier`, `prompt_cache_key`, `service_tier`) change nothing.
UNSUPPORTED: Unsupported = {
    "conversation": (lambda v: v is not None, "conversation objects are not supported; send previous_response_id"),
    "prompt": (lambda v: v is not None, "stored prompt templates are not supported by this server; send input"),
    "top_logprobs": (lambda v: v not in (None, 0), _NO_LOGPROBS),
    "include": (lambda v: isinstance(v, list) and "message.output_text.logprobs" in v, _NO_LOGPROBS),
    "max_tool_calls": (lambda v: v is not None, "max_tool_calls is not supported; bound calls with max_output_tokens"),
    "context_management": (lambda v: v is not None, "context management (compaction) is not supported"),
    "background": (lambda v: v not in (None, False), "background runs are not supported; send background false"),
    # "auto" would drop turns the client does not see.
    "truncation": (lambda v: v not in (None, "disabled"), "truncation is not supported; send 'disabled'"),
}


@dataclass(frozen=True)
class PreparedResponse:
    chat: chat.Prepared
    request: ResponsesRequest
    previous: StoredResponse | None  # the response this one continues
    new_messages: list[dict]  # this request's input as chat messages, stored after the previous conversation


def previous_conversation(state: ServerState, request: ResponsesRequest) -> StoredResponse | None:
    if request.previous_response_id is None:
        return None
    stored = state.responses.get(request.previous_response_id)
    if stored is None:
        raise response_not_found(request.previous_response_id, "previous_response_id")
    return stored


def response_not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"no response with id {response_id!r} is stored", param=param, code="response_not_found")


async def prepare(state: ServerState, request: ResponsesRequest) -> PreparedResponse:
    check_model(state, request, UNSUPPORTED)
    previous = previous_conversation(state, request)
    if request.input is None and previous is None:
        raise bad_request("send input, or previous_response_id to continue a stored response", "input")
    new_messages = input_messages(request)
    conversation = [*(previous.messages if previous else []), *new_messages]
    try:
        chat_request = ChatCompletionRequest.model_validate(chat_body(request, conversation))
    except ValidationError as error:
        detail = error.errors()[0]
        raise bad_request(f"input: {detail.get('msg', 'invalid value')}", "input") from None
    try:
        prepared = await chat.prepare(state, chat_request)
    except APIError as error:
        # A whole field renamed ("max_tokens", "response_format.json_schema"); a chat message's index
        # is not its input item's, so "messages[2]" stays as it is.
        field = re.match(r"\w+(?=\.|$)", error.param or "")
        if field and field[0] in _PARAMS:
            error.param = _PARAMS[field[0]] + error.param[field.end() :]
        raise
    return PreparedResponse(prepared, request, previous, new_messages)


def input_messages(request: ResponsesRequest) -> list[dict]:
    """The request's input items as chat messages: calls join the assistant turn before them."""
    if isinstance(request.input, str):
        return [{"role": "user", "content": request.input}]
    messages: list[dict] = []
    for i, item in enumerate(request.input or []):
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _content(item, i)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else "".join(part.text for part in item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    return messages


def _content(item: MessageItem, index: int) -> str | list[dict]:
    if isinstance(item.content, str):
        return item.content
    parts = []
    for j, part in enumerate(item.content):
        if isinstance(part, InputImage):
            if item.role != "user":
                raise bad_request(f"an {item.role} message cannot hold an image", f"input[{index}].content[{j}]")
            parts.append({"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}})
        elif isinstance(part, Refusal):
            parts.append(
                {"type": "refusal", "refusal": part.refusal} if item.role == "assistant" else _text(part.refusal)
            )
        else:
            parts.append(_text(part.text))
    return parts


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def chat_body(request: ResponsesRequest, conversation: list[dict]) -> dict:
    system = [{"role": "system", "content": request.instructions}] if request.instructions is not None else []
    body: dict = {
        "messages": [*system, *conversation],
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
        "parallel_tool_calls": request.parallel_tool_calls,
    }
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in request.tools
        ]
    choice = request.tool_choice
    if isinstance(choice, FunctionToolChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    text_format = request.text.format if request.text else None
    if isinstance(text_format, TextFormatJSONObject):
        body["response_format"] = {"type": "json_object"}
    elif isinstance(text_format, TextFormatJSONSchema):
        schema = text_format.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    return body


def response_shell(state: ServerState, response_id: str, request: ResponsesRequest) -> ResponseObject:
    """The response as it starts: the request's settings echoed, no output yet."""
    return ResponseObject(
        id=response_id,
        status="in_progress",
        model=state.settings.served_model_name,
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        parallel_tool_calls=request.parallel_tool_calls,
        previous_response_id=request.previous_response_id,
        store=request.store,
        temperature=request.temperature,
        top_p=request.top_p,
        tool_choice=request.tool_choice or "auto",
        tools=request.tools or [],
        user=request.user,
        metadata=request.metadata or {},
        **({"text": request.text.model_dump(by_alias=True, exclude_none=True)} if request.text else {}),
    )


def _usage(tally: Tally) -> ResponseUsage:
    """Chat's usage, in the Responses API's names."""
    usage = tally.usage()
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=tally.cached_tokens),
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _finish(response: ResponseObject, reason: str | None, tally: Tally) -> None:
    response.usage = _usage(tally)
    if reason == "length":
        response.status = "incomplete"
        response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        for item in response.output:
            if item.status == "in_progress":
                item.status = "incomplete"
    else:
        response.status = "completed"


def _store(state: ServerState, prepared: PreparedResponse, response: ResponseObject) -> None:
    if not prepared.request.store:
        return
    text = "".join(part.text for item in response.output if isinstance(item, OutputMessage) for part in item.content)
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in response.output
        if isinstance(item, FunctionCallOut)
    ]
    answer: dict = {"role": "assistant", "content": text or None}
    if calls:
        answer["tool_calls"] = calls
    state.responses.put(response.model_dump(), [*prepared.new_messages, answer], prepared.previous)


def _output_items(reader: ChoiceReader, status: str) -> list:
    items: list = []
    content = reader.content()
    if content or not reader.calls:
        items.append(OutputMessage(status=status, content=[OutputTextPart(text=content or "")]))
    items += [FunctionCallOut(call_id=c.id, name=c.function.name, arguments=c.function.arguments) for c in reader.calls]
    return items


async def complete(state: ServerState, response_id: str, prepared: PreparedResponse) -> ResponseObject:
    response = response_shell(state, response_id, prepared.request)
    tally, reader, reason = Tally(), chat.reader(state, prepared.chat.tools), None
    params = prepared.chat.params
    async for output in outputs(state, response_id, prepared.chat.prompt, params):
        tally.see(output, state)
        reader.feed(output.new_text)
        if output.finished:
            if output.finish_reason == "error":
                raise APIError(500, output.error or "internal error", type="server_error")
            _, reason = reader.finish(output.finish_reason)
    response.output = _output_items(reader, "incomplete" if reason == "length" else "completed")
    _finish(response, reason, tally)
    _store(state, prepared, response)
    return response


class _EventWriter:
    """The stream's events, numbered, with the output items they open and close."""

    def __init__(self, response: ResponseObject) -> None:
        self.response = response
        self.sequence = 0
        self.message: OutputMessage | None = None  # the open message item
        self.call: FunctionCallOut | None = None  # the open function call item

    def event(self, kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def lifecycle(self, kind: str) -> str:
        return self.event(kind, response=self.response.model_dump())

    def delta(self, delta: DeltaMessage | None) -> list[str]:
        if delta is None:
            return []
        events = self.text(delta.content) if delta.content else []
        for call in delta.tool_calls or []:
            if call.id is not None:  # a call's first delta
                events += self.close()
                events += self._open_call(call.id, call.function.name or "")
            if call.function.arguments and self.call is not None:
                self.call.arguments += call.function.arguments
                events.append(
                    self._on_item("response.function_call_arguments.delta", self.call, delta=call.function.arguments)
                )
        return events

    def text(self, text: str) -> list[str]:
        events = []
        if self.message is None:
            events += self.close()
            self.message = OutputMessage(status="in_progress")
            events.append(self._added(self.message))
            self.message.content.append(OutputTextPart(text=""))
            part = OutputTextPart(text="").model_dump()
            events.append(self._on_item("response.content_part.added", self.message, content_index=0, part=part))
        self.message.content[0].text += text
        events.append(
            self._on_item("response.output_text.delta", self.message, content_index=0, delta=text, logprobs=[])
        )
        return events

    def close(self, status: str = "completed") -> list[str]:
        """Close the open item, if any."""
        events = []
        if self.message is not None:
            item, self.message = self.message, None
            item.status = status
            part = item.content[0]
            events.append(
                self._on_item("response.output_text.done", item, content_index=0, text=part.text, logprobs=[])
            )
            events.append(self._on_item("response.content_part.done", item, content_index=0, part=part.model_dump()))
            events.append(self._done(item))
        if self.call is not None:
            item, self.call = self.call, None
            item.status = status
            events.append(
                self._on_item("response.function_call_arguments.done", item, arguments=item.arguments, name=item.name)
            )
            events.append(self._done(item))
        return events

    def _open_call(self, call_id: str, name: str) -> list[str]:
        self.call = FunctionCallOut(call_id=call_id, name=name, arguments="", status="in_progress")
        return [self._added(self.call)]

    def _added(self, item: OutputMessage | FunctionCallOut) -> str:
        self.response.output.append(item)
        return self.event(
            "response.output_item.added", output_index=len(self.response.output) - 1, item=item.model_dump()
        )

    def _done(self, item: OutputMessage | FunctionCallOut) -> str:
        index = self.response.output.index(item)
        return self.event("response.output_item.done", output_index=index, item=item.model_dump())

    def _on_item(self, kind: str, item: OutputMessage | FunctionCallOut, **fields) -> str:
        index = self.response.output.index(item)
        return self.event(kind, item_id=item.id, output_index=index, **fields)


def stream(state: ServerState, response_id: str, prepared: PreparedResponse) -> Events:
    """The response's events; an error, or the drain deadline cutting it short, ends it with the open
    items closed and `response.failed`."""
    response = response_shell(state, response_id, prepared.request)
    writer = _EventWriter(response)
    tally = Tally()

    def failed(error: APIError) -> list[str]:
        events = writer.close("incomplete")
        response.status = "failed"
        response.error = ResponseError(code=error.code or "server_error", message=error.message)
        response.usage = _usage(tally)
        return [*events, writer.lifecycle("response.failed")]

    async def events() -> AsyncIterator[str]:
        reader, reason = chat.reader(state, prepared.chat.tools), None
        yield writer.lifecycle("response.created")
        yield writer.lifecycle("response.in_progress")
        try:
            async for output in outputs(state, response_id, prepared.chat.prompt, prepared.chat.params):
                tally.see(output, state)
                for event in writer.delta(reader.feed(output.new_text) if output.new_text else None):
                    yield event
                if output.finished:
                    if output.finish_reason == "error":
                        raise APIError(500, output.error or "internal error", "server_error", code="server_error")
                    rest, reason = reader.finish(output.finish_reason)
                    for event in writer.delta(rest):
                        yield event
        except APIError as error:
            request_failed(error.code, error.message)
            for event in failed(error):
                yield event
            return
        if not response.output:  # an empty answer is still a message
            for event in writer.text(""):
                yield event
        for event in writer.close("incomplete" if reason == "length" else "completed"):
            yield event
        _finish(response, reason, tally)
        _store(state, prepared, response)
        yield writer.lifecycle("response.incomplete" if response.status == "incomplete" else "response.completed")

    return Events(events(), lambda error: "".join(failed(error)))
