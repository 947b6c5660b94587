"""The server through a real uvicorn process, with the official OpenAI client and raw HTTP."""

import asyncio
import json
import signal
import time

import httpx
import openai
import pytest

from benchmarks.server_process import ServerProcess
from tests.conftest import generate_cli, png_bytes
from tests.server_helpers import JSON, data_url

KEY = "test-key"


@pytest.fixture(scope="module")
def server(tiny_dir):
    process = ServerProcess(tiny_dir, "--api-key", KEY, "--served-model-name", "mono", "--max-num-seqs", "48")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_non_streaming_answer_equals_generate(client, tiny_dir):
    answer = client.chat.completions.create(
        model="mono",
        messages=[{"role": "user", "content": "Hello, who are you?"}],
        temperature=0,
        max_tokens=12,
        logprobs=True,
        top_logprobs=5,
    )
    offline = generate_cli(tiny_dir, "Hello, who are you?", 12)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == offline["text"]
    assert choice.finish_reason == offline["finish_reason"]
    # Two processes on the oneDNN path may differ in the last bits (docs/performance.md, run to run).
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(
        [t["logprob"] for t in offline["logprobs"]], abs=1e-2
    )
    assert len(choice.logprobs.content[0].top_logprobs) == 5
    assert answer.usage.prompt_tokens == len(offline["prompt_token_ids"])
    assert answer.usage.completion_tokens == len(offline["token_ids"])
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_stream_has_role_deltas_finish_usage_and_done(client, server):
    messages = [{"role": "user", "content": "Tell me a story."}]
    whole = client.chat.completions.create(model="mono", messages=messages, temperature=0, max_tokens=16)
    chunks = list(
        client.chat.completions.create(
            model="mono",
            messages=messages,
            temperature=0,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"messages": messages, "max_tokens": 3, "stream": True},
    ).text
    assert raw.rstrip().endswith("data: [DONE]") and raw.startswith("data: {")


def test_images_several_images_and_multi_turn(client, tiny_dir, tmp_path):
    png = png_bytes(900, 400, seed=5)
    image_part = {"type": "image_url", "image_url": {"url": data_url(png)}}
    one = client.chat.completions.create(
        model="mono",
        temperature=0,
        max_tokens=8,
        messages=[{"role": "user", "content": [image_part, {"type": "text", "text": "Describe the image."}]}],
    )
    path = tmp_path / "img.png"
    path.write_bytes(png)
    offline = generate_cli(tiny_dir, "Describe the image.", 8, "--image", str(path))
    assert one.choices[0].message.content == offline["text"]
    assert one.usage.prompt_tokens == len(offline["prompt_token_ids"]) > 3 * 256
    two = client.chat.completions.create(
        model="mono",
        temperature=0,
        max_tokens=4,
        messages=[{"role": "user", "content": [image_part, image_part, {"type": "text", "text": "Compare."}]}],
    )
    assert two.usage.prompt_tokens > 6 * 256
    turns = client.chat.completions.create(
        model="mono",
        temperature=0,
        max_tokens=4,
        messages=[
            {"role": "user", "content": [image_part, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "Noise."},
            {"role": "user", "content": "Sure?"},
        ],
    )
    # the system prompt and the image were computed for the first request
    assert turns.usage.prompt_tokens_details.cached_tokens >= 3 * 256
    assert turns.choices[0].finish_reason in ("stop", "length")


def test_n_stop_and_seed(client):
    messages = [{"role": "user", "content": "Count the objects in the picture."}]
    two = client.chat.completions.create(model="mono", messages=messages, n=2, temperature=1.0, seed=3, max_tokens=8)
    assert sorted(c.index for c in two.choices) == [0, 1]
    again = client.chat.completions.create(model="mono", messages=messages, n=2, temperature=1.0, seed=3, max_tokens=8)
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]
    greedy = client.chat.completions.create(model="mono", messages=messages, temperature=0, max_tokens=16)
    text = greedy.choices[0].message.content
    stop = text[3:5] if len(text) > 5 else None
    if stop and stop.strip():
        cut = client.chat.completions.create(model="mono", messages=messages, temperature=0, max_tokens=16, stop=[stop])
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_32_concurrent_streams_equal_their_answers_alone(server, client):
    prompts = [f"Question number {k}: what do you see?" for k in range(32)]
    alone = [
        client.chat.completions.create(
            model="mono", messages=[{"role": "user", "content": p}], temperature=0, max_tokens=10
        )
        .choices[0]
        .message.content
        for p in prompts[:6]
    ]

    async def one(aclient, prompt):
        stream = await aclient.chat.completions.create(
            model="mono", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=10, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as aclient:
            return await asyncio.gather(*(one(aclient, p) for p in prompts))

    together = asyncio.run(main())
    assert together[:6] == alone and all(together)
    assert wait_for(lambda: server.metric("monovl:kv_cache_usage_perc") == 0)


def wait_for(condition, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_client_disconnect_frees_kv_blocks(server):
    body = {
        "messages": [{"role": "user", "content": "Talk forever."}],
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert server.metric("monovl:kv_cache_usage_perc") > 0
    assert wait_for(lambda: server.metric("monovl:kv_cache_usage_perc") == 0)
    assert wait_for(lambda: server.metric("monovl:request_success_total", 'finished_reason="abort"') >= 1)


def post(server, body, key=KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(f"{server.url}/v1/chat/completions", content=raw, headers=headers | JSON)
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)


def assert_error(response: httpx.Response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


USER = [{"role": "user", "content": "hi"}]


def test_errors_have_openai_shape_and_status(server):
    assert_error(post(server, {"messages": USER}, key=None), 401, code="invalid_api_key")
    assert_error(post(server, {"messages": USER}, key="wrong"), 401)
    assert_error(post(server, {"messages": USER, "model": "gpt-4"}), 404, param="model", code="model_not_found")
    assert_error(post(server, None, raw=b"{not json"), 400)
    assert_error(post(server, {"messages": USER, "temperature": 5}), 400, param="temperature")
    assert_error(post(server, {"messages": USER, "max_tokens": 0}), 400, param="max_tokens")
    assert_error(post(server, {"messages": USER, "top_p": "high"}), 400, param="top_p")
    assert_error(post(server, {"messages": []}), 400, param="messages")
    assert_error(post(server, {"messages": [{"role": "wizard", "content": "x"}]}), 400, param="messages[0].role")
    bad_image = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}
    ]
    assert_error(post(server, {"messages": bad_image}), 400, param="messages[0].content[0].image_url")
    not_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(b"GIF89a-nope")}}]}]
    assert_error(post(server, {"messages": not_image}), 400, code="invalid_image")
    assert_error(post(server, None, raw=b"x" * (65 * 2**20)), 413)
    missing = httpx.get(f"{server.url}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert_error(missing, 404)
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_models_version_metrics_and_request_id(server):
    models = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "mono"
    assert "version" in httpx.get(f"{server.url}/version").json()
    echoed = httpx.get(f"{server.url}/health", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "monovl:num_requests_running",
        "monovl:num_requests_waiting",
        "monovl:kv_cache_usage_perc",
        "monovl:prompt_tokens_total",
        "monovl:generation_tokens_total",
        "monovl:time_to_first_token_seconds",
        "monovl:inter_token_latency_seconds",
        "monovl:e2e_request_latency_seconds",
        "monovl:request_success_total",
        "monovl:image_preprocess_seconds",
        "monovl:prefix_cache_hits_total",
    ):
        assert name in text, name


def test_full_queue_gets_503_with_retry_after(tiny_dir):
    small = ServerProcess(tiny_dir, "--max-queue", "1")
    try:
        body = {"messages": USER, "max_tokens": 3000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{small.url}/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()  # keep it: dropping httpx's line iterator closes the connection
            next(lines)
            busy = httpx.post(f"{small.url}/v1/chat/completions", json={"messages": USER})
            assert_error(busy, 503, code="overloaded")
            assert busy.headers["retry-after"]
    finally:
        small.stop()


def test_sigterm_finishes_in_flight_work(tiny_dir):
    process = ServerProcess(tiny_dir)
    body = {"messages": USER, "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{process.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        first = next(lines)
        process.process.terminate()
        rest = [line for line in lines if line]
    assert first.startswith("data: ") and rest[-1] == "data: [DONE]"
    # uvicorn re-raises the SIGTERM after its graceful shutdown, so the exit is by that signal
    assert process.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in process.stop()


def test_serve_without_a_model_makes_and_serves_the_demo_checkpoint(tmp_path):
    demo = ServerProcess(None, env={"MONOVL_CACHE": str(tmp_path), "MONOVL_MODEL": ""})
    try:
        models = httpx.get(f"{demo.url}/v1/models").json()
        assert models["data"][0]["id"] == "monovl-demo"
        answer = httpx.post(f"{demo.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 3}).json()
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        log = demo.stop()
    assert "demo checkpoint" in log and (tmp_path / "demo-checkpoint" / "config.json").is_file()


def test_remote_urls_are_off_by_default_and_file_urls_never_work(server):
    for url, code in (
        ("http://example.com/cat.png", "remote_images_disabled"),
        ("file:///etc/passwd", "invalid_image_url"),
    ):
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        error = assert_error(post(server, {"messages": messages}), 400, code=code)
        assert "passwd" not in error["message"]


def test_an_image_over_the_pixel_limit_is_413(server):
    from tests.test_image_decode import png_header_only

    messages = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": data_url(png_header_only(30000, 30000))}}],
        }
    ]
    assert_error(post(server, {"messages": messages}), 413, code="image_too_large")


def test_cors_preflight_for_an_allowed_origin(tiny_dir):
    cors = ServerProcess(tiny_dir, "--allowed-origins", "http://chat.example", "--api-key", KEY)
    try:
        preflight = httpx.options(
            f"{cors.url}/v1/chat/completions",
            headers={
                "Origin": "http://chat.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://chat.example"
        other = httpx.options(
            f"{cors.url}/v1/chat/completions",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers
    finally:
        cors.stop()


def test_content_errors_say_what_is_wrong_and_refusals_are_taken(server):
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    error = assert_error(post(server, {"messages": [{"role": "user", "content": [audio]}]}), 400)
    assert error["param"] == "messages[0].content[0].type"
    assert "'input_audio' is not supported by this model" in error["message"]
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(8, 8))}}
    error = assert_error(post(server, {"messages": [{"role": "system", "content": [image]}, *USER]}), 400)
    assert "'image_url' is not supported in a system message" in error["message"]
    error = assert_error(post(server, {"messages": [{"role": "user", "content": {"text": "hi"}}]}), 400)
    assert error["message"].endswith("content must be a string or a list of content parts")
    # An assistant turn with a refusal part (as OpenAI returns it) is taken, rendered as its text.
    said = [*USER, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]}, *USER]
    as_text = [*USER, {"role": "assistant", "content": "I cannot."}, *USER]
    ids = [
        httpx.post(f"{server.url}/tokenize", json={"messages": m}, headers={"Authorization": f"Bearer {KEY}"}).json()
        for m in (said, as_text)
    ]
    assert ids[0]["tokens"] == ids[1]["tokens"]
    assert post(server, {"messages": said, "max_tokens": 2}).status_code == 200


def test_image_detail_low_is_one_tile(server):
    image = data_url(png_bytes(900, 500))

    def count(detail: str | None) -> int:
        url = {"url": image} if detail is None else {"url": image, "detail": detail}
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.post(f"{server.url}/tokenize", json={"messages": messages}, headers=headers).json()["count"]

    text_only = count("low") - 256  # one 448 px tile, no thumbnail: 256 image tokens
    assert count(None) == count("auto") == count("high") == text_only + (2 + 1) * 256  # 2x1 tiles and a thumbnail


def test_openai_wire_details_nulls_top_p_zero_refusal_fields_and_json_content_types(server):
    # A null for a nullable parameter is its default.
    answer = post(server, {"messages": USER, "max_tokens": 2, "n": None, "logprobs": None, "stream": None})
    assert answer.status_code == 200, answer.text
    message = answer.json()["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None
    with_logprobs = post(server, {"messages": USER, "max_tokens": 2, "logprobs": True}).json()["choices"][0]
    assert with_logprobs["logprobs"]["refusal"] is None and len(with_logprobs["logprobs"]["content"]) == 2
    # top_p 0 is allowed: the most likely token only, so seeds cannot change the answer.
    texts = {
        post(server, {"messages": USER, "max_tokens": 6, "top_p": 0, "seed": seed, "ignore_eos": True}).json()[
            "choices"
        ][0]["message"]["content"]
        for seed in (1, 2, 3)
    }
    assert len(texts) == 1
    # A body sent as anything but JSON: a web page can post text/plain or a form without a preflight.
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Authorization": f"Bearer {KEY}"} | ({"Content-Type": content_type} if content_type else {})
        response = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers)
        assert_error(response, 415, code="unsupported_media_type")
        assert "Content-Type: application/json" in response.json()["error"]["message"]
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": content_type}
        assert httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers).status_code == 200


def test_completions_usage_has_its_details_and_stream_chunks_no_null_usage(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/completions"
    answer = httpx.post(url, json={"prompt": "Hello", "max_tokens": 2}, headers=headers).json()
    assert isinstance(answer["usage"]["prompt_tokens_details"]["cached_tokens"], int)  # an object, as chat's
    no_prompt = httpx.post(url, json={"prompt": None, "max_tokens": 2, "echo": None}, headers=headers)
    assert no_prompt.status_code == 200 and no_prompt.json()["usage"]["prompt_tokens"] == 1  # <s>, as OpenAI's
    body = {"prompt": "Hello", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url, json=body, headers=headers) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert all("usage" not in chunk for chunk in chunks[:-1]) and chunks[-1]["usage"]["total_tokens"] > 0
