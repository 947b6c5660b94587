"""The Responses API's wire format (OpenAI's `POST /v1/responses`), as pydantic models: the request
with its input items, and the response with its output items. Tool, item and part types the model
cannot take are refused by the models' own types: a 400 naming the field."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    Tag,
    model_serializer,
)

from monovl.server.protocol import JSONSchemaFormat, OpenAIRequest

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class _Item(BaseModel):
    # Items sent back as the API returned them carry fields of their own (ids, status, annotations).
    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------ input
class InputText(_Item):
    type: Literal["input_text"]
    text: str


class InputImage(_Item):
    type: Literal["input_image"]
    image_url: str  # a data: URL, as chat's image_url.url (a file_id has no file store here)
    detail: Literal["auto", "low", "high"] = "auto"


class OutputText(_Item):
    type: Literal["output_text"]
    text: str


class Refusal(_Item):
    type: Literal["refusal"]
    refusal: str


InputPart = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Item):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]


def _item_type(item: Any) -> str:
    """A message may come without `type` (OpenAI's "easy input message")."""
    if isinstance(item, dict):
        return item.get("type", "message")
    return getattr(item, "type", "message")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type),
]


class FunctionTool(BaseModel):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class FunctionToolChoice(BaseModel):
    type: Literal["function"]
    name: str


class TextFormatText(BaseModel):
    type: Literal["text"]


class TextFormatJSONObject(BaseModel):
    type: Literal["json_object"]


class TextFormatJSONSchema(JSONSchemaFormat):
    type: Literal["json_schema"]


TextFormat = Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # `verbosity` changes nothing here

    format: TextFormat = Field(default_factory=lambda: TextFormatText(type="text"))


class ResponsesRequest(OpenAIRequest):
    model: str | None = None
    input: str | list[InputItem] | None = None  # none: only a previous response's conversation
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=256)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    text: TextConfig | None = None
    previous_response_id: str | None = None
    store: StrictBool = True
    stream: StrictBool = False
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None


# ------------------------------------------------------------------ output
def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = Field(default_factory=list)
    logprobs: list = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str = Field(default_factory=lambda: item_id("msg"))
    status: ItemStatus = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart] = Field(default_factory=list)


class FunctionCallOut(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str = Field(default_factory=lambda: item_id("fc"))
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


OutputItem = Annotated[OutputMessage | FunctionCallOut, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0  # the document requires it; the prefix cache has no priced writes


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class Reasoning(BaseModel):
    effort: None = None
    summary: None = None


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning = Field(default_factory=Reasoning)
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: TextConfig().model_dump())  # as sent, by wire names
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    service_tier: Literal["default"] = "default"

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's document has `user` and `usage` as a string and an object, never null: each is left
        out while it has no value (a request without `user`, a response still running)."""
        data = handler(self)
        for name in ("user", "usage"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True
