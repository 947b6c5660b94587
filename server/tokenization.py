"""`/tokenize` and `/detokenize`, in vLLM's request and response shapes.

A chat's token ids are exactly those a chat completion would run: the template, the tools' turn
and every image's `<IMG_CONTEXT>` tokens included (so `count` is what the context must hold).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from monovl.server.chat import build_prompt, to_conversation
from monovl.server.completions import check_token_ids
from monovl.server.errors import bad_request
from monovl.server.generation import check_model
from monovl.server.protocol import ChatCompletionRequest, ChatMessageIn, Tool
from monovl.server.state import ServerState
from monovl.server.tools import tool_mode

MAX_DETOKENIZE = 1_000_000


class TokenizeRequest(BaseModel):
    """A text `prompt`, or chat `messages` (then `add_generation_prompt` applies)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = Field(default=None, min_length=1)
    tools: list[Tool] | None = Field(default=None, max_length=256)
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool = True  # text prompts: the leading <s>
    return_token_strs: StrictBool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[StrictInt] = Field(max_length=MAX_DETOKENIZE)


class DetokenizeResponse(BaseModel):
    prompt: str


async def tokenize(state: ServerState, request: TokenizeRequest) -> TokenizeResponse:
    check_model(state, request)
    if (request.prompt is None) == (request.messages is None):
        raise bad_request("give either prompt or messages", "prompt")
    if request.messages is not None:
        chat = ChatCompletionRequest(messages=request.messages, tools=request.tools)
        conversation = to_conversation(
            chat, tool_mode(chat), state.settings.max_images_per_request, state.max_prompt_chars
        )
        ids = (await build_prompt(state, conversation, None, request.add_generation_prompt)).token_ids
    else:
        text = request.prompt or ""
        if len(text) > state.max_prompt_chars:
            raise bad_request("the prompt is longer than any context this model has", "prompt")
        tokenizer = state.preprocessor.tokenizer
        ids = await state.pool.run(tokenizer.encode, text, request.add_special_tokens)
    tokenizer = state.preprocessor.tokenizer
    strs = [tokenizer.id_to_piece(i) for i in ids] if request.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids, token_strs=strs)


async def detokenize(state: ServerState, request: DetokenizeRequest) -> DetokenizeResponse:
    check_model(state, request)
    tokenizer = state.preprocessor.tokenizer
    check_token_ids(tokenizer, request.tokens, "tokens")
    # Special tokens are kept, so that tokenize and detokenize round-trip.
    text = await state.pool.run(tokenizer.decode, request.tokens, False)
    return DetokenizeResponse(prompt=text)
