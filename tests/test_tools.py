"""Tool calls: the prompt's rendering, the auto reader, and forced calls through the server with the
OpenAI SDK and LangChain."""

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from monovl.preprocessing.chat_template import DEFAULT_SYSTEM_MESSAGE, render_prompt
from monovl.server.chat import to_conversation
from monovl.server.protocol import ChatCompletionRequest
from monovl.server.tools import ChoiceReader, ToolMode, forced_call_grammar, tool_mode

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "now", "description": "The time"}},
]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tools_calls_and_results_render_as_internlm2_writes_them():
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'},
            ],
            "tools": TOOLS,
        }
    )
    prompt = render_prompt(to_conversation(request, tool_mode(request), 8, 10**6).messages, [])
    functions = json.dumps(
        [
            {"name": "get_weather", "description": "The forecast", "parameters": WEATHER},
            {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}},
        ],
        ensure_ascii=False,
        indent=4,
    )
    assert prompt == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>"
        f"<|im_start|>system name=<|plugin|>\n{functions}<|im_end|>"
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>"
        "<|im_start|>assistant\nLet me look.<|action_start|><|plugin|>\n"
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 1}}<|action_end|><|im_end|>'
        '<|im_start|>environment name=<|plugin|>\n{"temperature": 22}<|im_end|>'
        "<|im_start|>assistant\n"
    )


def test_tool_choice_none_leaves_the_tools_out_of_the_prompt():
    request = ChatCompletionRequest.model_validate({"messages": USER, "tools": TOOLS, "tool_choice": "none"})
    mode = tool_mode(request)
    assert mode.kind == "none"
    messages = to_conversation(request, mode, 8, 10**6).messages
    assert [m.role for m in messages] == ["user"]


def feed_all(reader: ChoiceReader, text: str, step: int = 3):
    deltas = [reader.feed(text[k : k + step]) for k in range(0, len(text), step)]
    rest, reason = reader.finish("stop")
    return [d for d in [*deltas, rest] if d is not None], reason


def test_auto_reads_internlm2_calls_and_streams_the_text_before_them():
    text = 'Checking.<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Oslo"}}<|action_end|>'
    reader = ChoiceReader(ToolMode("auto"), hidden_tokens=("<s>",))
    deltas, reason = feed_all(reader, text)
    streamed = "".join(d.content or "" for d in deltas)
    assert streamed == "Checking." and reason == "tool_calls"  # no part of a marker was streamed as text
    calls = [c for d in deltas for c in d.tool_calls or []]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    assert reader.content() == "Checking." and reader.calls[0].id.startswith("chatcmpl-tool-")


def test_auto_without_a_call_is_the_text():
    for text in ["Just words <s>here.", "Broken <|action_start|><|plugin|>\n{not json<|action_end|>"]:
        reader = ChoiceReader(ToolMode("auto"), hidden_tokens=("<s>",))
        deltas, reason = feed_all(reader, text)
        expected = text.replace("<s>", "")
        assert "".join(d.content or "" for d in deltas) == expected and reason == "stop"
        assert reader.content() == expected and reader.calls == []


def create(mono_client, **kwargs):
    return mono_client.chat.completions.create(model="mono", messages=USER, tools=TOOLS, max_tokens=400, **kwargs)


def test_required_and_named_calls_validate_plain_and_streamed(mono_client):
    parameters = {"get_weather": WEATHER, "now": {"type": "object", "properties": {}}}
    answer = create(mono_client, tool_choice="required", n=4, temperature=1.0, seed=5)
    for choice in answer.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), parameters[call.function.name])
    named = {"type": "function", "function": {"name": "get_weather"}}
    answer = create(mono_client, tool_choice=named, n=3, temperature=1.0, seed=5)
    for choice in answer.choices:
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather" and choice.message.content is None
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    for choice in [named, "required"]:
        arguments, names = {}, {}
        for chunk in create(mono_client, tool_choice=choice, temperature=1.0, seed=9, stream=True):
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
                names[call.index] = call.function.name or names.get(call.index)
        assert arguments
        for index, text in arguments.items():
            jsonschema.validate(json.loads(text), parameters[names[index]])


def test_parallel_tool_calls_false_gives_one_call(mono_client):
    answer = create(mono_client, tool_choice="required", n=4, temperature=1.0, seed=2, parallel_tool_calls=False)
    assert all(len(choice.message.tool_calls) == 1 for choice in answer.choices)


def test_auto_with_many_tools_is_plain_text_and_a_tool_result_turn_is_accepted(mono_client):
    # An internal frontend's 36 built-in functions with every message, no tool_choice.
    many = [
        {"type": "function", "function": {"name": f"builtin_{k}", "description": "x" * 40, "parameters": WEATHER}}
        for k in range(36)
    ]
    answer = mono_client.chat.completions.create(model="mono", messages=USER, tools=many, max_tokens=20, seed=1)
    assert answer.choices[0].message.tool_calls == [] and isinstance(answer.choices[0].message.content, str)
    turn = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": '{"temperature": 22}'}]},
    ]
    answer = mono_client.chat.completions.create(model="mono", messages=turn, tools=TOOLS, max_tokens=10)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_bad_tool_choices_are_400s(mono_client):
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        create(mono_client, tool_choice={"type": "function", "function": {"name": "missing"}})
    with pytest.raises(openai.BadRequestError, match="needs at least one tool"):
        mono_client.chat.completions.create(model="mono", messages=USER, tool_choice="required", max_tokens=5)


class Forecast(BaseModel):
    """A weather forecast."""

    city: str = Field(max_length=12)
    days: int = Field(ge=1, le=7)
    sunny: bool


def test_langchain_structured_output_in_json_schema_and_function_calling_modes(mono_server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="mono", base_url=f"{mono_server.url}/v1", api_key="none", max_tokens=300, temperature=1.0, max_retries=0
    )
    for method in ["json_schema", "function_calling"]:
        structured = llm.with_structured_output(Forecast, method=method)
        for seed in range(3):
            result = structured.invoke("Forecast for Oslo?", seed=seed)
            assert isinstance(result, Forecast), (method, result)


class Place(BaseModel):
    # ASCII patterns, not maxLength: the grammar engine takes UTF-8 byte sequences of surrogate
    # code points, which decode as three replacement characters each and so overrun a maxLength.
    city: str = Field(pattern="^[A-Za-z ]{1,12}$")
    country: str = Field(pattern="^[A-Z]{2}$")


class Trip(BaseModel):
    """A trip: nested models, so the schema has $defs and $refs (as every nested pydantic model)."""

    start: Place
    stops: list[Place] = Field(max_length=2)
    days: int = Field(ge=1, le=9)


def test_tools_with_nested_schemas_are_called_in_every_mode(mono_client):
    trip = openai.pydantic_function_tool(Trip)
    schema = trip["function"]["parameters"]
    assert "$defs" in schema and "$ref" in json.dumps(schema["properties"])
    tools = [trip, TOOLS[1]]
    for choice in ("required", {"type": "function", "function": {"name": "Trip"}}, "auto"):
        answer = mono_client.chat.completions.create(
            model="mono", messages=USER, tools=tools, tool_choice=choice, max_tokens=400, seed=3, temperature=1.0
        )
        for call in answer.choices[0].message.tool_calls or []:
            if call.function.name == "Trip":
                jsonschema.validate(json.loads(call.function.arguments), schema)
        if choice != "auto":
            assert answer.choices[0].message.tool_calls


def test_the_required_grammar_carries_each_tools_definitions_to_the_root():
    request = ChatCompletionRequest.model_validate(
        {"messages": USER, "tools": [openai.pydantic_function_tool(Trip), TOOLS[0]], "tool_choice": "required"}
    )
    grammar = forced_call_grammar(request, tool_mode(request))
    schema = json.loads(grammar.spec)
    assert set(schema["$defs"]) == {"0_Place"}
    refs = json.dumps(schema).split('"$ref": ')[1:]
    assert refs and all(ref.startswith('"#/$defs/0_Place"') for ref in refs)
    valid = [{"name": "Trip", "parameters": {"start": {"city": "Oslo", "country": "NO"}, "stops": [], "days": 2}}]
    jsonschema.validate(valid, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "Trip", "parameters": {"start": {"city": 1}, "stops": [], "days": 2}}], schema)


def test_a_required_list_cut_short_keeps_its_whole_calls():
    reader = ChoiceReader(ToolMode("required"))
    reader.feed('[{"name": "now", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Pa')
    delta, finish_reason = reader.finish("length")
    assert finish_reason == "length" and [c.function.name for c in reader.calls] == ["now"]
    assert reader.content() is None and delta.tool_calls[0].function.arguments == "{}"
    none_whole = ChoiceReader(ToolMode("required"))
    none_whole.feed('[{"name": "get_weather", "parameters": {"ci')
    assert none_whole.finish("length") == (None, "length")  # the list is not content, whole or cut
    assert none_whole.content() is None and none_whole.calls == []
    whole = ChoiceReader(ToolMode("required"))
    whole.feed('[ {"name": "now", "parameters": {}} , {"name": "now", "parameters": {"x": [1, "]"]}} ]')
    assert [c.function.arguments for c in whole.finish("stop")[0].tool_calls] == ["{}", '{"x": [1, "]"]}']


def test_streamed_tool_call_deltas_name_the_call_only_in_their_first_delta(mono_server, mono_client):
    import httpx

    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        body = {"model": "mono", "messages": USER, "tools": TOOLS, "tool_choice": choice, "max_tokens": 200}
        with httpx.stream("POST", f"{mono_server.url}/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        deltas = [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls", [])]
        assert deltas
        seen = set()
        for delta in deltas:
            first = delta["index"] not in seen
            seen.add(delta["index"])
            keys = set(delta) | {f"function.{k}" for k in delta["function"]}
            if first:
                assert {"id", "type", "function.name"} <= keys, delta
            else:
                assert keys <= {"index", "function", "function.arguments"}, delta
    # The SDK's stream helper assembles the calls (it asserts on a repeated id or name).
    with mono_client.chat.completions.stream(
        model="mono", messages=USER, tools=[openai.pydantic_function_tool(Trip)], max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "Trip"}},
    ) as stream:  # fmt: skip
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "Trip" and isinstance(call.function.parsed_arguments, Trip)
