"""Schemathesis against the server's own /openapi.json: for every operation, valid and invalid
requests generated from the schema; never a 5xx, always a documented status.

(Schemathesis's pytest plugin does not load under this pytest; its schema, strategies and checks
are driven from a plain test instead.)
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance

from tests.server_helpers import ServerProcess


@pytest.fixture(scope="module")
def server(tiny_dir):
    # A short context bounds what a generated request can ask for.
    process = ServerProcess(tiny_dir, "--max-model-len", "256", "--max-image-tiles", "2")
    yield process
    process.stop()


def test_no_generated_request_gets_a_5xx(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "GET /v1/models", "GET /health"}
    statuses: dict[tuple[str, int], int] = {}
    for operation in operations:
        has_body = operation.method.upper() == "POST"  # only a body can be made invalid here
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 1 + has_body]:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                response = case.call(timeout=30)
                key = (case.operation.label, response.status_code)
                statuses[key] = statuses.get(key, 0) + 1
                case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

            no_server_error()
    chat = "POST /v1/chat/completions"
    assert statuses.get((chat, 200), 0) > 0 and statuses.get((chat, 400), 0) > 50  # both kinds of body were sent


def test_the_server_is_healthy_with_no_kv_in_use_after(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.metric("monovl:kv_cache_usage_perc") == 0
