"""Tool calls: the tools in the prompt, the grammar of a forced call, and the calls read from the output.

The prompt follows InternLM2-chat's own format (InternLM's chat/chat_format.md), in the turn
separators of the Mono-InternVL template: the functions as a JSON list in a `system` turn named
`<|plugin|>`; an earlier call as `<|action_start|><|plugin|>\\n{"name": ..., "parameters": ...}
<|action_end|>` after the assistant's text; a result as an `environment` turn named `<|plugin|>`.

`tool_choice` "auto" reads calls in that format from the model's text; where there is none the
answer is the text. A forced call is constrained as vLLM constrains it: a named function writes
its arguments only (its parameters' schema); "required" writes a JSON list of one or more
`{"name", "parameters"}` objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from monovl.engine.structured_output import StructuredOutput
from monovl.server.errors import bad_request
from monovl.server.protocol import (
    ChatCompletionRequest,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    NamedToolChoice,
    Tool,
    ToolCall,
)

PLUGIN = "<|plugin|>"
ACTION_START = "<|action_start|>"
ACTION_END = "<|action_end|>"
CALL_START = ACTION_START + PLUGIN
NO_ARGUMENTS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolMode:
    kind: Literal["none", "auto", "required", "named"]
    name: str | None = None  # the forced function

    @property
    def forced(self) -> bool:
        return self.kind in ("required", "named")


def tool_mode(request: ChatCompletionRequest) -> ToolMode:
    """As OpenAI: no tools means none; tools without a tool_choice means auto."""
    tools, choice = request.tools or [], request.tool_choice
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in {t.function.name for t in tools}:
            raise bad_request(
                f"tool_choice names the function {choice.function.name!r}, which is not in tools",
                "tool_choice",
            )
        return ToolMode("named", choice.function.name)
    if choice == "required" and not tools:
        raise bad_request('tool_choice "required" needs at least one tool in tools', "tool_choice")
    if not tools or choice == "none":
        return ToolMode("none")
    return ToolMode(choice or "auto")


def functions_prompt(tools: list[Tool]) -> str:
    """The tools' turn, as InternLM's chat format writes it (a JSON list, indented by 4)."""
    functions = [
        {
            "name": t.function.name,
            "description": t.function.description or "",
            "parameters": t.function.parameters or NO_ARGUMENTS,
        }
        for t in tools
    ]
    return json.dumps(functions, ensure_ascii=False, indent=4)


def call_text(name: str, arguments: str) -> str:
    """An earlier call as the assistant wrote it; the arguments go in as the client sent them."""
    return f'{CALL_START}\n{{"name": {json.dumps(name, ensure_ascii=False)}, "parameters": {arguments}}}{ACTION_END}'


def forced_call_grammar(request: ChatCompletionRequest, mode: ToolMode) -> StructuredOutput:
    by_name = {t.function.name: t.function for t in request.tools or []}
    if mode.kind == "named":
        return StructuredOutput.json_schema(by_name[mode.name].parameters or NO_ARGUMENTS)
    calls, definitions = [], {}
    for k, (name, f) in enumerate(by_name.items()):
        parameters, own = _hoisted(f.parameters or NO_ARGUMENTS, f"{k}_")
        definitions |= own
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [name]}, "parameters": parameters},
                "required": ["name", "parameters"],
            }
        )
    schema: dict = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if definitions:
        schema["$defs"] = definitions
    if not request.parallel_tool_calls:
        schema["maxItems"] = 1
    return StructuredOutput.json_schema(schema)


_DEFINITIONS = ("$defs", "definitions")  # JSON Schema's name, and draft 7's that pydantic v1 wrote


def _hoisted(parameters: dict, prefix: str) -> tuple[dict, dict]:
    """A tool's parameters, nested inside the list of calls, whose local definitions (`#/$defs/X`,
    as every nested pydantic model has) would no longer resolve there: the parameters without
    them, their refs pointing to `#/$defs/<prefix>X`, and those definitions to put at the root."""
    if not any(isinstance(parameters.get(key), dict) for key in _DEFINITIONS):
        return parameters, {}

    def moved(node: object) -> object:
        if isinstance(node, dict):
            ref = node.get("$ref")
            for key in _DEFINITIONS:
                if isinstance(ref, str) and ref.startswith(f"#/{key}/"):
                    node = {**node, "$ref": f"#/$defs/{prefix}{ref[len(key) + 3 :]}"}
            return {k: moved(v) for k, v in node.items()}
        if isinstance(node, list):
            return [moved(v) for v in node]
        return node

    definitions = {}
    for key in _DEFINITIONS:
        for name, schema in (parameters.get(key) or {}).items():
            definitions[f"{prefix}{name}"] = moved(schema)
    rest = {k: v for k, v in parameters.items() if k not in _DEFINITIONS}
    return moved(rest), definitions


@dataclass
class ChoiceReader:
    """One choice's text in, the answer's content and tool calls out (streamed as deltas or whole)."""

    mode: ToolMode
    hidden_tokens: tuple[str, ...] = ()  # special tokens auto mode decodes but the content must not show
    text: str = ""  # everything fed
    streamed: int = 0  # characters of `text` already sent as content
    calls: list[ToolCall] = field(default_factory=list)
    announced: bool = False  # a named call's id and name were streamed

    def __post_init__(self) -> None:
        if self.mode.kind == "named":
            self.calls.append(ToolCall(function=FunctionCall(name=self.mode.name or "", arguments="")))

    def feed(self, text: str) -> DeltaMessage | None:
        """What a stream sends for this new text now (None: nothing yet)."""
        self.text += text
        if self.mode.kind == "named":  # the text is the arguments: stream them as they come
            first, self.announced = not self.announced, True
            self.streamed = len(self.text)
            self.calls[0].function.arguments = self.text
            return DeltaMessage(tool_calls=[self._delta(0, text, first)])
        if self.mode.kind == "required":
            return None  # a JSON list: sent as calls once whole
        end = len(self.text)
        if self.mode.kind == "auto":
            at = self.text.find(ACTION_START)
            end = at if at >= 0 else _safe_end(self.text, ACTION_START)
        content = self._clean(self.text[self.streamed : end])
        self.streamed = max(self.streamed, end)
        return DeltaMessage(content=content) if content else None

    def finish(self, finish_reason: str | None) -> tuple[DeltaMessage | None, str | None]:
        """The rest of a stream for this choice, and the finish reason the answer gives."""
        if self.mode.kind == "named":
            return None, finish_reason  # OpenAI ends a forced call with "stop"
        if self.mode.kind == "required":
            self.calls = _parse_required(self.text)
        elif self.mode.kind == "auto":
            content, self.calls = _parse_auto(self.text)
            self.text = content  # what the answer's content is, whole
            self.streamed = min(self.streamed, len(content))
        # A required answer is a list of calls, never content, even cut before its first call ended.
        rest = self._clean(self.text[self.streamed :]) if not self.calls and self.mode.kind != "required" else ""
        self.streamed = len(self.text)
        delta = DeltaMessage(content=rest or None, tool_calls=self._deltas() or None)
        if self.calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        return (delta if rest or self.calls else None), finish_reason

    def content(self) -> str | None:
        if self.mode.kind in ("named", "required"):
            return None
        return self._clean(self.text) or (None if self.calls else "")

    def _clean(self, text: str) -> str:
        for token in self.hidden_tokens:
            text = text.replace(token, "")
        return text

    def _delta(self, index: int, arguments: str, first: bool) -> DeltaToolCall:
        call = self.calls[index]
        if first:
            return DeltaToolCall(
                index=index,
                id=call.id,
                type="function",
                function=DeltaFunctionCall(name=call.function.name, arguments=arguments),
            )
        return DeltaToolCall(index=index, function=DeltaFunctionCall(arguments=arguments))

    def _deltas(self) -> list[DeltaToolCall]:
        return [self._delta(i, call.function.arguments, first=True) for i, call in enumerate(self.calls)]


def _safe_end(text: str, marker: str) -> int:
    """Where content may be sent up to: short of a tail that could still become `marker`."""
    for keep in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)


def _parse_required(text: str) -> list[ToolCall]:
    """The calls of a "required" list; of a list cut short (finish_reason "length"), the calls
    before the cut, each whole."""
    decoder, calls = json.JSONDecoder(), []
    at = _skip_space(text, 0)
    if not text.startswith("[", at):
        return []
    at = _skip_space(text, at + 1)
    while at < len(text) and text[at] != "]":
        try:
            call, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break  # the cut
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            calls.append(_call(call["name"], call.get("parameters", {})))
        at = _skip_space(text, at)
        if text.startswith(",", at):
            at = _skip_space(text, at + 1)
    return calls


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _parse_auto(text: str) -> tuple[str, list[ToolCall]]:
    """The text before the first call, and every call written in InternLM2's format."""
    content, *actions = text.split(CALL_START)
    calls = []
    for action in actions:
        body = action.split(ACTION_END, 1)[0].strip()
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            return text, []  # not a call after all: the text is the answer
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return text, []
        calls.append(_call(call["name"], call.get("parameters", call.get("arguments", {}))))
    return content.strip() if calls else content, calls


def _call(name: str, arguments: object) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return ToolCall(function=FunctionCall(name=name, arguments=text))
