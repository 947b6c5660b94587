"""Which grammar a chat request asks for: OpenAI's `response_format`, vLLM's `structured_outputs`
and `guided_*` fields, or a forced tool call. At most one may be given."""

from __future__ import annotations

import json
from dataclasses import dataclass

from monovl.engine.structured_output import StructuredOutput
from monovl.server.errors import bad_request
from monovl.server.protocol import ChatCompletionRequest, ResponseFormatJSONObject, ResponseFormatJSONSchema
from monovl.server.tools import ToolMode, forced_call_grammar


@dataclass(frozen=True)
class Constraint:
    output: StructuredOutput
    param: str  # the field that asked for it, for the error that names it


def requested_constraint(request: ChatCompletionRequest, mode: ToolMode) -> Constraint | None:
    found = [c for c in _candidates(request, mode) if c is not None]
    if len(found) > 1:
        names = ", ".join(c.param for c in found)
        raise bad_request(f"only one output constraint may be given; the request has {names}", found[1].param)
    return found[0] if found else None


def _candidates(request: ChatCompletionRequest, mode: ToolMode) -> list[Constraint | None]:
    return [
        _response_format(request),
        *_vllm_fields(request),
        Constraint(forced_call_grammar(request, mode), "tool_choice") if mode.forced else None,
    ]


def _response_format(request: ChatCompletionRequest) -> Constraint | None:
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJSONObject):
        return Constraint(StructuredOutput("json_object"), "response_format")
    if isinstance(fmt, ResponseFormatJSONSchema):
        schema = fmt.json_schema.json_schema
        if schema is None:  # OpenAI's schema is optional: then any JSON object
            return Constraint(StructuredOutput("json_object"), "response_format.json_schema")
        return Constraint(StructuredOutput.json_schema(schema), "response_format.json_schema.schema")
    return None


def _vllm_fields(request: ChatCompletionRequest) -> list[Constraint | None]:
    found: list[Constraint | None] = []
    so = request.structured_outputs
    if so is not None:
        given = {
            "json": _json(so.json_, "structured_outputs.json"),
            "regex": so.regex and StructuredOutput("regex", so.regex),
            "choice": so.choice is not None and StructuredOutput.choice(so.choice),
            "grammar": so.grammar and StructuredOutput("grammar", so.grammar),
            "json_object": so.json_object and StructuredOutput("json_object"),
        }
        found += [Constraint(v, f"structured_outputs.{k}") for k, v in given.items() if v]
    guided = {
        "guided_json": _json(request.guided_json, "guided_json"),
        "guided_regex": request.guided_regex is not None and StructuredOutput("regex", request.guided_regex),
        "guided_choice": request.guided_choice is not None and StructuredOutput.choice(request.guided_choice),
        "guided_grammar": request.guided_grammar is not None and StructuredOutput("grammar", request.guided_grammar),
    }
    found += [Constraint(v, k) for k, v in guided.items() if v]
    return found


def _json(schema: dict | str | None, param: str) -> StructuredOutput | None:
    if schema is None:
        return None
    if isinstance(schema, str):
        try:
            json.loads(schema)
        except json.JSONDecodeError as e:
            raise bad_request(f"the JSON schema is not valid JSON: {e}", param) from None
    return StructuredOutput.json_schema(schema)
