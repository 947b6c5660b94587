"""What one request may ask for: sequences (prompts x n) against the cap and the queue, echoed prompt
logprobs bounded and made once, and exact validation (integer token ids, the real prompt count, the
offending field named)."""

import asyncio
import json
import time

import httpx
import pytest

from benchmarks.server_process import ServerProcess
from monovl.server.completions import Completion, CompletionChoice, CompletionLogprobs
from monovl.server.echo_json import echo_response
from tests.hostile import data_url, image_message
from tests.load import stream_events
from tests.server_helpers import health_pings_during

USER = [{"role": "user", "content": "hi"}]
CONTEXT = 4096


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--max-model-len", str(CONTEXT), "--max-queue", "10")
    yield process
    process.stop()


def post(server: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def assert_error(response: httpx.Response, status: int, param: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["param"] == param and (code is None or error["code"] == code), error
    return error


def test_the_echo_bomb_is_refused_at_once_naming_the_limit(server):
    """The attack (4,000 prompt ids, logprobs 20, n 128) would be 10.8 million logprob entries."""
    server.reset_peak()
    before = server.resident_mib()
    started = time.perf_counter()
    body = {"prompt": [5] * 4000, "echo": True, "logprobs": 20, "n": 128, "max_tokens": 1}
    error = assert_error(post(server, "/v1/completions", body), 400, "logprobs", "too_many_logprobs")
    assert "--max-echo-logprobs" in error["message"] and "10752000" in error["message"]
    assert time.perf_counter() - started < 5
    assert server.resident_mib(peak=True) - before < 500


def test_a_request_over_the_sequence_cap_is_refused_naming_the_setting(server):
    body = {"prompt": ["a b"] * 64, "n": 128, "max_tokens": 1}
    error = assert_error(post(server, "/v1/completions", body), 400, "n", "too_many_sequences")
    assert "8192 completions" in error["message"] and "--max-request-sequences" in error["message"]
    assert post(server, "/v1/completions", {"prompt": ["a b"] * 2, "n": 4, "max_tokens": 1}).status_code == 200


def test_sequences_count_against_the_queue(server):
    async def main() -> tuple[int, int]:
        started = asyncio.Event()
        long = {"messages": USER, "max_tokens": 3000, "ignore_eos": True, "n": 8, "stream": True}
        holding = asyncio.create_task(stream_events(f"{server.url}/v1/chat/completions", long, started))
        await started.wait()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            three = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, "n": 3})
            two = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, "n": 2})
        holding.cancel()
        return three.status_code, two.status_code

    assert asyncio.run(main()) == (503, 200)  # 8 + 3 > --max-queue 10 >= 8 + 2


def test_an_echo_within_the_limit_is_served_with_one_prompt_logprobs_per_choice(server):
    body = {"prompt": [5 + i % 900 for i in range(2000)], "echo": True, "logprobs": 5, "n": 4, "max_tokens": 2}
    response, pings = health_pings_during(server, lambda: post(server, "/v1/completions", body))
    assert response.status_code == 200
    choices = response.json()["choices"]
    echoed = [c["logprobs"]["top_logprobs"][:2000] for c in choices]
    assert len(choices) == 4 and all(e == echoed[0] for e in echoed)
    assert echoed[0][0] is None and len(echoed[0][1]) >= 5
    assert max(pings) < 1.0, max(pings)


def test_token_ids_must_be_integers(server):
    for prompt in ([True], [1.0], [1, "a"]):
        error = assert_error(post(server, "/v1/completions", {"prompt": prompt}), 400, "prompt")
        assert "token ids (integers)" in error["message"]
    assert_error(post(server, "/detokenize", {"tokens": [True]}), 400, "tokens[0]")


def test_a_prompt_of_exactly_the_context_is_refused_with_its_real_count(server):
    error = assert_error(post(server, "/v1/completions", {"prompt": [5] * CONTEXT}), 400, "prompt")
    assert error["code"] == "context_length_exceeded"
    assert f"your prompt contains {CONTEXT} input tokens" in error["message"] and "no room" in error["message"]
    chat = [{"role": "user", "content": "word " * 60}]
    counted = post(server, "/tokenize", {"messages": chat}).json()["count"]
    error = assert_error(
        post(server, "/v1/chat/completions", {"messages": chat, "max_tokens": CONTEXT}), 400, "max_tokens"
    )
    assert "input tokens" not in error["message"] and f"{CONTEXT} output tokens" in error["message"]
    error = assert_error(
        post(server, "/v1/chat/completions", {"messages": chat, "max_tokens": CONTEXT - 10}), 400, "max_tokens"
    )
    assert f"your prompt contains {counted} input tokens" in error["message"]


def test_a_bad_field_inside_a_content_part_is_named(server):
    message = image_message(data_url(b"x"))
    message[0]["content"][0]["image_url"]["detail"] = "ultra"
    assert_error(
        post(server, "/v1/chat/completions", {"messages": message}), 400, "messages[0].content[0].image_url.detail"
    )
    message = [{"role": "user", "content": [{"type": "text", "text": 5}]}]
    assert_error(post(server, "/v1/chat/completions", {"messages": message}), 400, "messages[0].content[0].text")
    body = {"prompt": "a", "logprobs": 21}
    assert json.loads(post(server, "/v1/completions", body).text)["error"]["param"] == "logprobs"


def test_the_shared_echo_json_is_the_completion_with_each_choices_logprobs():
    def logprobs(tokens: list[str], start: int) -> CompletionLogprobs:
        values = [None if t == "<s>" else -0.25 * k for k, t in enumerate(tokens)]
        tops = [None if v is None else {t: v, 'q"\u00e9': -9.5} for t, v in zip(tokens, values, strict=True)]
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=list(range(start, start + len(tokens)))
        )

    prompts = {0: logprobs(["<s>", "a", '"logprobs":null'], 0), 1: logprobs(["<s>", "b"], 0)}
    own = {i: logprobs([f"x{i}"] * (i % 3), 5) for i in range(4)}  # choice 0 and 3 generated nothing
    texts = ['t"logprobs":null', "u", "v\n", ""]
    choices = [CompletionChoice(index=i, text=texts[i], finish_reason="length") for i in range(4)]
    completion = Completion(id="cmpl-1", model='m"', choices=choices, usage=None)
    body = json.loads(echo_response(completion, prompts, own, n=2).body)
    for choice in completion.choices:
        prompt, mine = prompts[choice.index // 2], own[choice.index]
        choice.logprobs = CompletionLogprobs(
            **{field: getattr(prompt, field) + getattr(mine, field) for field in CompletionLogprobs.model_fields}
        )
    assert body == completion.model_dump()
