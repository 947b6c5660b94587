"""The server's own /openapi.json: a valid OpenAPI document (openapi-spec-validator), and
Schemathesis against it: for every operation, valid and invalid requests generated from the
schema; never a 5xx, always a documented status, every answer as its schema says.

(Schemathesis's pytest plugin does not load under this pytest; its schema, strategies and checks
are driven from a plain test instead.)
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from benchmarks.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tiny_dir):
    # A short context bounds what a generated request can ask for.
    process = ServerProcess(tiny_dir, "--max-model-len", "320", "--max-image-tiles", "1")
    yield process
    process.stop()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_document_is_valid_openapi_and_every_reference_resolves(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    validate(document)  # resolves every $ref, too
    paths = document["paths"]
    for path in ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/v1/models/{model_id}"]:
        assert path in paths
    chat = paths["/v1/chat/completions"]["post"]
    assert {"200", "400", "404", "500", "503"} <= set(chat["responses"])
    assert "$ref" in chat["requestBody"]["content"]["application/json"]["schema"]


def test_no_generated_request_gets_a_5xx(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    expected = {"POST /v1/chat/completions", "POST /v1/completions", "POST /tokenize", "GET /v1/models", "GET /health"}
    assert {op.label for op in operations} >= expected
    statuses: dict[tuple[str, int], int] = {}
    for operation in operations:
        has_body = operation.method.upper() == "POST"  # only a body can be made invalid here
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 1 + has_body]:
            # Fewer valid requests than invalid ones: a valid chat runs the model, an invalid one is a quick 400.
            examples = 100 if mode is GenerationMode.NEGATIVE else 50

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                response = case.call(timeout=30)
                key = (case.operation.label, response.status_code)
                statuses[key] = statuses.get(key, 0) + 1
                case.validate_response(response, checks=CHECKS)

            no_server_error()
    for route in ["POST /v1/chat/completions", "POST /v1/completions"]:
        assert statuses.get((route, 200), 0) > 0 and statuses.get((route, 400), 0) > 50  # both kinds were sent


def test_the_server_is_healthy_with_no_kv_in_use_after(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.metric("monovl:kv_cache_usage_perc") == 0


def test_a_streamed_answer_conforms_to_the_document(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operation = schema["/v1/chat/completions"]["POST"]
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    case = operation.Case(body=body, media_type="application/json")
    response = case.call(timeout=30)
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    case.validate_response(response, checks=CHECKS)
