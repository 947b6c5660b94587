"""The OpenAI chat-completions wire format, as pydantic models in the API reference's field order.

Vendor extensions (vLLM's names) sit in a marked section; `to_sampling_params` takes every
knob the request sets and leaves the rest to SamplingParams' defaults (OpenAI's).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_serializer, model_validator

from monovl.engine.sampling_params import INT64_MAX, INT64_MIN, SamplingParams, SamplingParamsError
from monovl.engine.structured_output import StructuredOutput


class ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageContentPart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalContentPart(BaseModel):
    """An earlier assistant turn's refusal, as OpenAI's API sends it back; in the prompt it is text."""

    type: Literal["refusal"]
    refusal: str


_TOKEN_ID = re.compile(r"-?[0-9]{1,18}")
MAX_STOP_CHARS = 1000

ContentPart = Annotated[TextContentPart | ImageContentPart, Field(discriminator="type")]


class FunctionCallIn(BaseModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCallIn(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


TextContent = str | list[TextContentPart]


class SystemMessage(BaseModel):
    role: Literal["system", "developer"]
    content: TextContent
    name: str | None = None


class UserMessage(BaseModel):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


AssistantPart = Annotated[TextContentPart | RefusalContentPart, Field(discriminator="type")]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None


class ToolMessage(BaseModel):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


ChatMessageIn = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: no arguments
    strict: StrictBool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ResponseFormatText(BaseModel):
    type: Literal["text"]


class ResponseFormatJSONObject(BaseModel):
    type: Literal["json_object"]


class JSONSchemaFormat(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    # `schema` shadows a BaseModel attribute; the wire name is kept by the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormatJSONSchema(BaseModel):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class StructuredOutputsParams(BaseModel):
    """vLLM's `structured_outputs` object: exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: StrictBool | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class OpenAIRequest(BaseModel):
    """A request body as OpenAI's API reads one: unknown fields are kept to be named in the log (as
    vLLM does), not honoured; a field sent as null takes its default, as OpenAI's nullable parameters
    mean."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


class SamplingRequest(OpenAIRequest):
    """The fields the chat and text completion requests share: how tokens are chosen and constrained."""

    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(default=None, max_length=300)
    max_tokens: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None

    # --- extensions, named as vLLM names them ---
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: StrictBool = False
    skip_special_tokens: StrictBool = True
    structured_outputs: StructuredOutputsParams | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not _TOKEN_ID.fullmatch(key):
                raise ValueError(f"logit_bias keys must be token ids, got {key[:20]!r}")
        return bias

    @field_validator("stop")
    @classmethod
    def _short_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        # Each step looks for every stop string near the end of the text, so their length is work.
        for one in [stop] if isinstance(stop, str) else stop or []:
            if len(one) > MAX_STOP_CHARS:
                raise ValueError(f"stop strings may be at most {MAX_STOP_CHARS} characters")
        return stop

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(
        self, max_tokens: int | None, logprobs: int | None, structured_output: StructuredOutput | None
    ) -> SamplingParams:
        # An empty stop string (the document allows one) would stop before any text: it is left out.
        stop = [one for one in ([self.stop] if isinstance(self.stop, str) else self.stop or []) if one]
        bias = {int(k): v for k, v in (self.logit_bias or {}).items()}
        # A knob the request leaves out (or sends as null) takes SamplingParams' default, its one home.
        knobs = {name: getattr(self, name) for name in _KNOBS}
        if knobs["top_p"] == 0:  # OpenAI allows it: the most likely token only
            knobs |= {"top_p": None, "temperature": 0.0}
        return SamplingParams(
            n=self.n,
            **{name: value for name, value in knobs.items() if value is not None},
            logit_bias=bias,
            seed=self.seed,
            stop=tuple(stop),
            ignore_eos=self.ignore_eos,
            max_tokens=max_tokens,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens,
            structured_output=structured_output,
        )


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessageIn] = Field(min_length=1)
    logprobs: StrictBool = False
    max_completion_tokens: int | None = None
    parallel_tool_calls: StrictBool = True
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = Field(default=None, max_length=256)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_num_tiles: int | None = Field(default=None, ge=1, le=40)  # vLLM-style extension

    def to_sampling_params(self, structured_output: StructuredOutput | None = None) -> SamplingParams:
        """As vLLM: without max_tokens (or max_completion_tokens) a request may use the rest of the context."""
        logprobs = None
        if self.logprobs:
            logprobs = self.top_logprobs or 0
        elif self.top_logprobs is not None:
            raise SamplingParamsError("top_logprobs", "top_logprobs needs logprobs to be true")
        try:
            return self.sampling_params(_or(self.max_completion_tokens, self.max_tokens), logprobs, structured_output)
        except SamplingParamsError as error:
            if error.param == "max_tokens" and self.max_completion_tokens is not None:  # name the field sent
                raise SamplingParamsError("max_completion_tokens", str(error)) from None
            raise


_KNOBS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


def _or(value, default):
    """The request's value unless it is absent (0 is a value, and may be out of range)."""
    return default if value is None else value


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None  # the model never refuses apart from its text


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-tool-{uuid.uuid4().hex}")
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None  # in OpenAI's schema; null: this model refuses only in its text
    tool_calls: list[ToolCall] = Field(default_factory=list)


class Choice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class _Delta(BaseModel):
    """OpenAI's deltas carry only the fields that changed: a call's id, type and name in its first
    delta alone, its arguments in the rest."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class DeltaFunctionCall(_Delta):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Delta):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(_Delta):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "monovl"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
