"""The `internlm2-chat` prompt, rendered byte-exact from a list of chat messages.

MPT style: `<|im_start|>{role}\\n{content}<|im_end|>` per message with no newline between them,
the default system message first when the conversation has none (an empty user or assistant
turn is its header alone, as in the reference), and `<|im_start|>assistant\\n`
at the end. A message's parts render in order, joined by `\\n`; an image part renders as
`<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`. One image and then a question
gives exactly the reference's `<img>...</img>\\n{question}`. A named turn's header is
`{role} name={name}`, as InternLM2-chat writes the tools' turns (server/tools.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
STOP_TOKENS = ("</s>", IM_START, IM_END)

# The reference template's default system message (internvl/conversation.py, `internlm2-chat`).
DEFAULT_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)

# `environment` carries tool results, as InternLM2-chat's format has it (server/tools.py).
Role = Literal["system", "user", "assistant", "environment"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """The request's image number `index` (0-based, in the order images appear)."""

    index: int


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    parts: tuple[TextPart | ImagePart, ...]
    name: str | None = None  # a header's `name=`: the tools' turn and their results are named <|plugin|>

    @classmethod
    def text(cls, role: Role, text: str, name: str | None = None) -> ChatMessage:
        return cls(role, (TextPart(text),), name)


def image_block(num_tokens: int) -> str:
    return IMG_START + IMG_CONTEXT * num_tokens + IMG_END


def render_prompt(messages: list[ChatMessage], image_tokens: list[int], add_generation_prompt: bool = True) -> str:
    """The full prompt; `image_tokens[k]` is the number of <IMG_CONTEXT> tokens of image k."""
    if not messages or messages[0].role != "system" or messages[0].name is not None:
        messages = [ChatMessage.text("system", DEFAULT_SYSTEM_MESSAGE), *messages]
    rendered = []
    for message in messages:
        content = "\n".join(
            part.text if isinstance(part, TextPart) else image_block(image_tokens[part.index]) for part in message.parts
        )
        # The reference renders an empty user or assistant turn as its role header alone.
        closed = content or message.role in ("system", "environment")
        header = message.role if message.name is None else f"{message.role} name={message.name}"
        rendered.append(f"{IM_START}{header}\n{content}{IM_END if closed else ''}")
    if add_generation_prompt:
        rendered.append(f"{IM_START}assistant\n")
    return "".join(rendered)
