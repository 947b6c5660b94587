"""The Responses API (`/v1/responses`) with the clients that use it: the OpenAI SDK (plain, streamed
with its helper, tools, structured output, stored and continued responses) and the OpenAI Agents
SDK's default model, beside its chat completions model; the prompt a chat would run."""

import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from monovl.server.protocol import ChatCompletionRequest
from monovl.server.response_store import ResponseStore
from monovl.server.responses import chat_body, input_messages
from monovl.server.responses_protocol import ResponsesRequest
from tests.conftest import png_bytes
from tests.server_helpers import data_url

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}, "days": {"type": "integer", "maximum": 9}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The forecast", "parameters": WEATHER}]


def create(mono_client, **kwargs):
    return mono_client.responses.create(model="mono", **kwargs)


def test_a_response_its_usage_retrieval_and_deletion(mono_client):
    answer = create(mono_client, input="Hello there", instructions="Be brief.", max_output_tokens=12)
    assert answer.id.startswith("resp_") and answer.object == "response" and answer.model == "mono"
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    (message,) = answer.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    assert answer.output_text == message.content[0].text and answer.instructions == "Be brief."
    usage = answer.usage
    assert usage.output_tokens == 12 and usage.total_tokens == usage.input_tokens + 12
    assert mono_client.responses.retrieve(answer.id).model_dump() == answer.model_dump()
    deleted = mono_client.responses.delete(answer.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    for call in (lambda: mono_client.responses.retrieve(answer.id), lambda: mono_client.responses.delete(answer.id)):
        with pytest.raises(openai.NotFoundError) as error:
            call()
        assert error.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError) as error:
        create(mono_client, input="hi", previous_response_id="resp_unknown", max_output_tokens=2)
    assert error.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(mono_client):
    answer = create(mono_client, input="Hello", max_output_tokens=2, store=False)
    assert answer.store is False
    with pytest.raises(openai.NotFoundError):
        mono_client.responses.retrieve(answer.id)


def test_the_prompt_is_the_one_chat_runs_for_the_same_conversation(mono_client):
    image = data_url(png_bytes(600, 300, seed=4))
    items = [
        {"role": "user", "content": [
            {"type": "input_image", "image_url": image, "detail": "high"},
            {"type": "input_text", "text": "What is the weather where this was taken?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Oslo", "days": 1}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "clear"}'},
        {"role": "user", "content": "Thanks. And tomorrow?"},
    ]  # fmt: skip
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image, "detail": "high"}},
            {"type": "text", "text": "What is the weather where this was taken?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
        {"role": "user", "content": "Thanks. And tomorrow?"},
    ]  # fmt: skip
    request = ResponsesRequest.model_validate({"input": items, "instructions": "Answer briefly.", "tools": TOOLS})
    converted = ChatCompletionRequest.model_validate(chat_body(request, input_messages(request)))
    chat_tools = [{"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}]
    expected = ChatCompletionRequest.model_validate({"messages": messages, "tools": chat_tools})
    assert converted.messages == expected.messages and converted.tools == expected.tools
    answer = create(mono_client, input=items, instructions="Answer briefly.", tools=TOOLS, max_output_tokens=3)
    chat = mono_client.chat.completions.create(model="mono", messages=messages, tools=chat_tools, max_tokens=3)
    assert answer.usage.input_tokens == chat.usage.prompt_tokens > 3 * 256  # two tiles and a thumbnail


def test_previous_response_id_continues_the_conversation_from_the_cache(mono_client):
    first = create(mono_client, input="Tell me about lighthouses. " * 8, max_output_tokens=6)
    second = create(mono_client, input="More, please.", previous_response_id=first.id, max_output_tokens=4)
    assert second.previous_response_id == first.id
    messages = [
        {"role": "user", "content": "Tell me about lighthouses. " * 8},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "More, please."},
    ]
    chat = mono_client.chat.completions.create(model="mono", messages=messages, max_tokens=1)
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    assert second.usage.input_tokens_details.cached_tokens >= 64  # the first turn's blocks


class Caption(BaseModel):
    subject: str = Field(pattern="^[a-z ]{1,20}$")
    objects: int = Field(ge=0, le=99)


def test_text_format_json_schema_and_json_object(mono_client):
    parsed = mono_client.responses.parse(model="mono", input="Describe it.", text_format=Caption, max_output_tokens=200)
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Caption)
    answer = create(
        mono_client, input="JSON please", text={"format": {"type": "json_object"}}, max_output_tokens=300, temperature=0
    )
    if answer.status == "completed":
        assert isinstance(json.loads(answer.output_text), dict)


def test_function_calls_in_every_tool_choice(mono_client):
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        answer = create(
            mono_client, input="Weather in Oslo?", tools=TOOLS, tool_choice=choice, max_output_tokens=200, temperature=0
        )  # greedy: sampled, a list of parallel calls can run past max_output_tokens
        calls = [item for item in answer.output if item.type == "function_call"]
        assert answer.status == "completed" and calls
        for call in calls:
            assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
            jsonschema.validate(json.loads(call.arguments), WEATHER)
    auto = create(mono_client, input="Weather in Oslo?", tools=TOOLS, max_output_tokens=8)
    assert auto.output and auto.tools[0].name == "get_weather"


def test_streams_follow_openais_event_sequence_and_the_sdk_helper_assembles_them(mono_server, mono_client):
    # greedy: the same answer each run (sampled, a stop token within five tokens would complete it)
    body = {"model": "mono", "input": "Say hi", "max_output_tokens": 5, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{mono_server.url}/v1/responses", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text
    with mono_client.responses.stream(
        model="mono", input="Weather?", tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200, temperature=0,
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    (call,) = final.output
    assert call.type == "function_call" and json.loads(call.arguments)["city"] in ("Oslo", "Paris")


def test_what_the_model_cannot_do_is_a_400_naming_it(mono_client):
    refusals = [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": None}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ]
    for fields, param in refusals:
        with pytest.raises(openai.BadRequestError) as error:
            create(mono_client, **{"input": "hi", **fields})
        assert error.value.body["param"].startswith(param), (fields, error.value.body)


def test_the_store_is_bounded_in_entries_and_bytes():
    store = ResponseStore(max_entries=3, max_bytes=2000)
    for k in range(5):
        assert store.put({"id": f"r{k}", "text": "x" * 100}, [{"role": "user", "content": "hi"}])
    assert len(store) == 3 and store.get("r0") is None and store.get("r4") is not None
    store.get("r2")  # used: kept over r3
    assert store.put({"id": "big", "text": "x" * 1200}, [])
    assert store.get("r2") is not None and store.get("r3") is None and store.bytes <= 2000
    assert not store.put({"id": "huge", "text": "x" * 3000}, []) and store.get("huge") is None


def test_an_agent_runs_to_its_answer_on_the_responses_and_the_chat_model(mono_server):
    from typing import Literal

    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=f"{mono_server.url}/v1", api_key="none", max_retries=0)
    set_default_openai_client(client, use_for_tracing=False)
    asked = []

    @function_tool
    def get_weather(city: Literal["Oslo", "Paris"]) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    settings = ModelSettings(tool_choice="required", parallel_tool_calls=False, max_tokens=200)
    for model in ("mono", OpenAIChatCompletionsModel("mono", client)):  # "mono": the default, Responses model
        agent = Agent(
            name="weather", instructions="Use the tool.", tools=[get_weather], model=model,
            model_settings=settings, tool_use_behavior="stop_on_first_tool",
        )  # fmt: skip
        result = Runner.run_sync(agent, "What is the weather in Oslo?")
        assert result.final_output == f"sunny in {asked[-1]}"
    assert len(asked) == 2


def test_a_follow_up_is_measured_by_what_it_adds():
    store = ResponseStore(max_entries=10, max_bytes=10**6)
    first = [{"role": "user", "content": "x" * 1000}, {"role": "assistant", "content": "ok"}]
    assert store.put({"id": "r1"}, first)
    earlier = store.get("r1")
    assert store.put({"id": "r2"}, [{"role": "user", "content": "more"}], earlier)
    second = store.get("r2")
    assert second.messages == [*first, {"role": "user", "content": "more"}]
    assert second.messages_size == earlier.messages_size + len(json.dumps([{"role": "user", "content": "more"}]))
