"""The server against OpenAI's own API document (tests/openai/openapi.json, reduced from
openai/openai-openapi): real responses of every route served, streamed and not, validated against
its response schemas; and Schemathesis's requests made from its request schemas, none answered with
a 5xx, every refusal naming what the request asked for that this server does not do.

Where the document and OpenAI's API differ, the API is followed, and each place is named in
`AS_THE_API_SENDS`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from benchmarks.server_process import ServerProcess
from tests.conftest import png_bytes
from tests.server_helpers import data_url

DOCUMENT = Path(__file__).parent / "openai" / "openapi.json"
MODEL = "mono"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Oslo", "Paris"]}, "days": {"type": "integer", "maximum": 9}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}


def read_nullable(node: object) -> object:
    """OpenAPI 3.0's `nullable: true`, which the 3.1 document still uses in places, as JSON Schema's
    null: the value may be null."""
    if isinstance(node, list):
        return [read_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: read_nullable(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [schema, {"type": "null"}]} if node.get("nullable") is True else schema


def as_the_api_sends(components: dict) -> dict:
    """The document's one completion schema serves whole completions and stream chunks alike, so its
    finish_reason is never null; OpenAI's API sends null on chunks before the last, as chat's chunk
    schema has it. With `echo`, the prompt's first token has no logprob: the API sends null for its
    token_logprobs and top_logprobs entries (vLLM too); the document's arrays hold numbers and objects."""
    components = copy.deepcopy(components)
    choice = components["schemas"]["CreateCompletionResponse"]["properties"]["choices"]["items"]
    logprobs = choice["properties"]["logprobs"]["anyOf"][0]["properties"]
    for name in ("token_logprobs", "top_logprobs"):
        logprobs[name]["items"] = {"anyOf": [logprobs[name]["items"], {"type": "null"}]}
    chunk = copy.deepcopy(components["schemas"]["CreateCompletionResponse"])
    reason = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {"anyOf": [reason, {"type": "null"}]}
    components["schemas"]["CompletionStreamChunk"] = chunk
    return components


AS_THE_API_SENDS = as_the_api_sends.__doc__
COMPONENTS = as_the_api_sends(read_nullable(json.loads(DOCUMENT.read_text()))["components"])


def assert_conforms(schema_name: str, instance: object) -> None:
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema_name}", "components": COMPONENTS})
    error = best_match(validator.iter_errors(instance))
    assert error is None, f"{schema_name} at {error.json_path}: {error.message}\n{json.dumps(instance)[:2000]}"


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--served-model-name", MODEL, "--max-model-len", "1024", "--max-image-tiles", "2")
    yield process
    process.stop()


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1{path}", json={"model": MODEL, **body}, timeout=60)


def stream(server: ServerProcess, path: str, body: dict) -> list[dict]:
    """The events of a streamed answer, [DONE] left out."""
    with httpx.stream(
        "POST", f"{server.url}/v1{path}", json={"model": MODEL, **body, "stream": True}, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]" or path == "/responses"
    return [json.loads(line) for line in lines if line != "[DONE]"]


IMAGE = {"type": "image_url", "image_url": {"url": data_url(png_bytes(500, 300, seed=2))}}
CHATS = {
    "plain": {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6},
    "logprobs, two choices": {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "logprobs": True,
        "top_logprobs": 2,
        "n": 2,
    },
    "an image": {
        "messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "What?"}]}],
        "max_tokens": 4,
    },
    "a tool call": {
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [CHAT_TOOL],
        "tool_choice": "required",
        "max_tokens": 200,
        "temperature": 0,  # greedy: sampled, a list of parallel calls can run past max_tokens
    },
    "json schema": {
        "messages": [{"role": "user", "content": "Weather?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}},
        "max_tokens": 40,
    },
    "stopped": {"messages": [{"role": "user", "content": "Count"}], "max_tokens": 30, "stop": ["e", "a", "o"]},
}


@pytest.mark.parametrize("body", CHATS.values(), ids=CHATS.keys())
def test_chat_completions_and_their_chunks_conform(server, body):
    answer = post(server, "/chat/completions", body)
    assert answer.status_code == 200, answer.text
    assert_conforms("CreateChatCompletionResponse", answer.json())
    if "tools" in body:  # so the tool call's schema is met, not just the message's
        assert answer.json()["choices"][0]["message"]["tool_calls"]
    chunks = stream(server, "/chat/completions", {**body, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        assert_conforms("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0


COMPLETIONS = {
    "plain": {"prompt": "Once", "max_tokens": 5},
    "echo and logprobs": {"prompt": "The cat sat", "max_tokens": 4, "echo": True, "logprobs": 2},
    "a batch of token lists, two choices": {"prompt": [[1, 400, 500], [1, 600]], "max_tokens": 3, "n": 2},
    "logprobs": {"prompt": ["A", "B"], "max_tokens": 4, "logprobs": 0},
    "max_tokens 0, echo": {"prompt": "Only this", "max_tokens": 0, "echo": True, "logprobs": 1},
    "no prompt": {"max_tokens": 3},
}


@pytest.mark.parametrize("body", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_completions_and_their_chunks_conform(server, body):
    answer = post(server, "/completions", body)
    assert answer.status_code == 200, answer.text
    assert_conforms("CreateCompletionResponse", answer.json())
    assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
    chunks = stream(server, "/completions", {**body, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        assert_conforms("CompletionStreamChunk", chunk)
    assert "usage" in chunks[-1] and all("usage" not in chunk for chunk in chunks[:-1])


def test_models_conform(server):
    listed = httpx.get(f"{server.url}/v1/models").json()
    assert_conforms("ListModelsResponse", listed)
    one = httpx.get(f"{server.url}/v1/models/{MODEL}").json()
    assert_conforms("Model", one)


RESPONSES = {
    "plain": {"input": "Hello", "max_output_tokens": 6, "instructions": "Be brief."},
    "an image": {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": IMAGE["image_url"]["url"]},
                    {"type": "input_text", "text": "What?"},
                ],
            }
        ],
        "max_output_tokens": 4,
    },
    "a function call": {
        "input": "Weather in Oslo?",
        "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}],
        "tool_choice": "required",
        "max_output_tokens": 200,
        "temperature": 0,
    },
    "json schema": {
        "input": "Weather?",
        "text": {"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
        "max_output_tokens": 40,
    },
}


@pytest.mark.parametrize("body", RESPONSES.values(), ids=RESPONSES.keys())
def test_responses_their_events_and_stored_ones_conform(server, body):
    answer = post(server, "/responses", body)
    assert answer.status_code == 200, answer.text
    assert_conforms("Response", answer.json())
    if "tools" in body:
        assert {item["type"] for item in answer.json()["output"]} == {"function_call"}
    stored = httpx.get(f"{server.url}/v1/responses/{answer.json()['id']}")
    assert_conforms("Response", stored.json())
    events = stream(server, "/responses", body)
    for event in events:
        assert_conforms("ResponseStreamEvent", event)
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert httpx.delete(f"{server.url}/v1/responses/{answer.json()['id']}").status_code == 200


def test_errors_conform(server):
    refused = [
        post(server, "/chat/completions", {"messages": []}),
        post(server, "/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}),
        post(server, "/completions", {"prompt": "x", "max_tokens": 10**6}),
        post(server, "/responses", {"input": "x", "tools": [{"type": "web_search"}]}),
        httpx.get(f"{server.url}/v1/models/other"),
        httpx.get(f"{server.url}/v1/responses/resp_unknown"),
        httpx.post(f"{server.url}/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"}),
    ]
    assert [r.status_code for r in refused] == [400, 404, 400, 400, 404, 404, 415]
    for response in refused:
        assert_conforms("ErrorResponse", response.json())


# What a refusal of a request OpenAI's document allows must not read like: pydantic's own words for
# which union member or tag it tried, rather than what the request asked for that is not served.
PYDANTIC_WORDS = ("Input tag", "Value error", "()", "Field required", "Input should be '", "ToolChoice")


def test_requests_the_document_allows_are_served_or_refused_naming_the_field(tiny_dir):
    """Schemathesis makes requests from the document's request schemas (its positive cases: all valid
    by the document), with the model set to the served one (another would only be a 404)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    document = json.loads(DOCUMENT.read_text())
    fields = {  # the top-level fields of each request schema
        "POST /chat/completions": _properties({"$ref": "CreateChatCompletionRequest"}),
        "POST /completions": _properties({"$ref": "CreateCompletionRequest"}),
        "POST /responses": _properties({"$ref": "CreateResponse"}),
    }
    server = ServerProcess(tiny_dir, "--served-model-name", MODEL, "--max-model-len", "512", "--max-image-tiles", "1")
    statuses: dict[tuple[str, int], int] = {}
    try:
        for result in schemathesis.openapi.from_dict(document).get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
            @settings(
                max_examples=100 if operation.label in fields else 20,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def served_or_refused_naming_the_field(case):
                if isinstance(case.body, dict) and "model" in case.body:
                    case.body["model"] = MODEL
                response = case.call(base_url=f"{server.url}/v1", timeout=60)
                label = case.operation.label
                key = (label, response.status_code)
                statuses[key] = statuses.get(key, 0) + 1
                assert response.status_code < 500, response.text
                if response.status_code < 400:
                    return
                assert response.status_code in (400, 404), response.text
                error = response.json()
                assert_conforms("ErrorResponse", error)
                error = error["error"]
                assert not any(word in error["message"] for word in PYDANTIC_WORDS), error
                if label in fields:
                    field = error["param"].split(".")[0].split("[")[0]
                    assert field in fields[label], error  # a field the document has
                else:
                    assert error["code"] in ("model_not_found", "response_not_found", "not_found"), error

            served_or_refused_naming_the_field()
        assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        server.stop()
    # Both kinds were sent. (Most generated Responses requests ask for something refused by name, a
    # tool, item or field it does not serve, so whether any is served there depends on the draw.)
    for route in ("POST /chat/completions", "POST /completions"):
        assert statuses.get((route, 200), 0) > 10 and statuses.get((route, 400), 0) > 10, statuses


def _properties(schema: dict) -> set[str]:
    if "$ref" in schema:
        schema = COMPONENTS["schemas"][schema["$ref"].split("/")[-1]]
    return set(schema.get("properties", {})) | {p for part in schema.get("allOf", []) for p in _properties(part)}
