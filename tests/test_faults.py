"""Faults: a failure inside one request fails that request alone; the server goes on."""

import asyncio
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from benchmarks.server_process import ServerProcess, free_port
from monovl.server.app import create_app
from monovl.server.cli import build_parser
from monovl.server.preprocess_pool import PoolClosed, PreprocessPool
from monovl.server.serve import build_state
from tests.conftest import png_bytes
from tests.hostile import data_url, image_message

POISON = png_bytes(50, 40, seed=99)
GOOD = png_bytes(60, 40, seed=7)


@pytest.fixture(scope="module")
def inprocess(tiny_dir):
    port = free_port()
    args = build_parser().parse_args(
        ["serve", "--model", str(tiny_dir), "--host", "127.0.0.1", "--port", str(port), "--engine-thread"]
    )
    state = build_state(args)
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", state
    server.should_exit = True
    thread.join(timeout=20)


def ask(url: str, png: bytes, max_tokens: int = 6) -> httpx.Response:
    body = {"messages": image_message(data_url(png)), "temperature": 0, "max_tokens": max_tokens}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


async def ask_many(url: str, images: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(
            client.post(f"{url}/v1/chat/completions", json={"messages": image_message(data_url(png)),
                                                             "temperature": 0, "max_tokens": 6})
            for png in images
        ))  # fmt: skip


def test_an_exception_in_preprocessing_fails_that_request_only(inprocess, monkeypatch):
    url, state = inprocess
    expected = ask(url, GOOD).json()["choices"][0]["message"]["content"]
    real = state.preprocessor.load_image

    def load_image(data, max_tiles=None, limit=None):
        if data == POISON:
            raise RuntimeError("injected preprocessing fault")
        return real(data, max_tiles, limit)

    monkeypatch.setattr(state.preprocessor, "load_image", load_image)
    responses = asyncio.run(ask_many(url, [GOOD, POISON, GOOD, GOOD]))
    assert [r.status_code for r in responses] == [200, 500, 200, 200]
    assert responses[1].json()["error"]["type"] == "server_error" and "injected" not in responses[1].text
    assert all(r.json()["choices"][0]["message"]["content"] == expected for r in responses if r.status_code == 200)


def test_an_exception_in_the_forward_fails_that_request_only(inprocess, monkeypatch):
    url, state = inprocess
    expected = ask(url, GOOD).json()["choices"][0]["message"]["content"]
    model = state.engine.core.engine.model
    real = model.embed_images
    poison_tile = state.preprocessor.load_image(POISON).pixel_values()[0]

    def embed_images(pixel_values):
        if any(bool((tile == poison_tile).all()) for tile in pixel_values):
            raise RuntimeError("injected forward fault")
        return real(pixel_values)

    monkeypatch.setattr(model, "embed_images", embed_images)
    responses = asyncio.run(ask_many(url, [GOOD, POISON, GOOD]))
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert all(r.json()["choices"][0]["message"]["content"] == expected for r in responses if r.status_code == 200)
    assert state.engine.core.engine.num_free_blocks == state.engine.core.engine.block_pool.num_blocks


def test_a_stopped_preprocessing_pool_is_replaced(inprocess):
    url, state = inprocess
    state.image_pool.executor.shutdown(wait=True)
    assert ask(url, GOOD).status_code == 200
    assert state.image_pool.restarts >= 1


def test_a_job_that_raises_fails_alone_and_a_closed_pool_refuses_work():
    pool = PreprocessPool(1, "test")

    def fails():
        raise RuntimeError("cannot schedule new futures after shutdown")  # the executor's own words, from a job

    with pytest.raises(RuntimeError, match="after shutdown"):
        asyncio.run(pool.run(fails))
    assert pool.restarts == 0 and asyncio.run(pool.run(lambda: 7)) == 7
    pool.shutdown()
    with pytest.raises(PoolClosed):
        asyncio.run(pool.run(lambda: 7))
    assert pool.restarts == 0


def test_slow_remote_fetches_do_not_hold_up_data_url_images(inprocess, monkeypatch):
    url, state = inprocess
    release = threading.Event()

    class SlowHost:
        def fetch(self, address, param):
            release.wait(timeout=30)
            return GOOD

    fetchers = PreprocessPool(4, "test-fetch")
    monkeypatch.setattr(state, "remote_images", SlowHost())
    monkeypatch.setattr(state, "fetch_pool", fetchers)

    async def run() -> tuple[int, bool]:
        async with httpx.AsyncClient(timeout=60) as client:
            remote = [
                asyncio.create_task(client.post(f"{url}/v1/chat/completions", json={
                    "messages": image_message(f"https://slow.example/{k}.png"), "max_tokens": 2}))
                for k in range(state.settings.image_workers + 1)
            ]  # fmt: skip
            await asyncio.sleep(0.5)  # every fetch waits on the slow host now
            local = await client.post(f"{url}/v1/chat/completions", json={
                "messages": image_message(data_url(GOOD)), "max_tokens": 2})  # fmt: skip
            waiting = not any(task.done() for task in remote)
            release.set()
            assert all(r.status_code == 200 for r in await asyncio.gather(*remote))
            return local.status_code, waiting

    try:
        assert asyncio.run(run()) == (200, True)
    finally:
        release.set()
        fetchers.shutdown()


def test_a_kv_pool_too_small_for_the_load_queues_and_preempts(tiny_dir):
    # 40 blocks of 16 tokens (512 bytes per token in the tiny model) for 24 chats of ~100 tokens each;
    # text only, as the pool cannot hold an image
    pool = str(40 * 16 * 512 / 2**30)
    small = ServerProcess(tiny_dir, "--kv-cache-memory", pool, "--max-num-seqs", "24", "--max-images-per-request", "0")
    try:
        prompts = [f"Question {k}, please answer." for k in range(24)]
        alone = [httpx.post(f"{small.url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": 30}, timeout=60,
        ).json()["choices"][0]["message"]["content"] for p in prompts[:3]]  # fmt: skip

        async def together():
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*(client.post(f"{small.url}/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": p}], "temperature": 0, "max_tokens": 30,
                }) for p in prompts))  # fmt: skip

        responses = asyncio.run(together())
        assert all(r.status_code == 200 for r in responses)
        assert [r.json()["choices"][0]["message"]["content"] for r in responses[:3]] == alone
        assert small.metric("monovl:kv_cache_usage_perc") == 0
        assert small.metric("monovl:num_preemptions_total") > 0
    finally:
        small.stop()


def test_a_padded_vocab_generates_and_detokenizes(make_checkpoint):
    # 4,000 rows against a ~1,000-token tokenizer: a random model samples mostly rows with no text.
    from monovl.checkpoint import load_checkpoint
    from monovl.engine.llm_engine import EngineConfig, LLMEngine
    from monovl.engine.sampling_params import SamplingParams
    from monovl.preprocessing.chat_template import ChatMessage

    loaded = load_checkpoint(str(make_checkpoint(vocab=4000)), "float32", "cpu")
    assert loaded.model.config.llm.vocab_size == 4000
    engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(num_kv_blocks=64))
    prompt = loaded.preprocessor.process([ChatMessage.text("user", "Hello!")], [])
    engine.add_request("r", prompt, SamplingParams(temperature=1.0, seed=0, max_tokens=24, ignore_eos=True))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    tokens = [t for o in outputs for t in o.new_token_ids]
    assert outputs[-1].finish_reason == "length" and len(tokens) == 24
    assert any(t >= loaded.preprocessor.tokenizer.vocab_size for t in tokens)
    assert "".join(o.new_text for o in outputs) == loaded.preprocessor.tokenizer.decode(tokens)


def test_a_detokenizer_fault_fails_that_request_only(tiny_model, preprocessor, monkeypatch):
    from monovl.checkpoint import LoadedCheckpoint
    from monovl.engine.detokenizer import IncrementalDetokenizer
    from monovl.engine.llm_engine import EngineConfig, LLMEngine
    from monovl.engine.sampling_params import SamplingParams
    from monovl.preprocessing.chat_template import ChatMessage

    tokens = LoadedCheckpoint(None, tiny_model, preprocessor).tokens
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=64))
    for name in ("good", "bad"):
        prompt = preprocessor.process([ChatMessage.text("user", "Hi!")], [])
        engine.add_request(name, prompt, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    poisoned = engine.text.detokenizer("bad")
    real = IncrementalDetokenizer.append

    def append(self, token):
        if self is poisoned:
            raise RuntimeError("injected detokenizer fault")
        return real(self, token)

    monkeypatch.setattr(IncrementalDetokenizer, "append", append)
    finished = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.finish_reason
    assert finished == {"bad": "error", "good": "length"}
    assert engine.num_free_blocks == 64


def _engine(tiny_model, preprocessor, **config):
    from monovl.checkpoint import LoadedCheckpoint
    from monovl.engine.llm_engine import EngineConfig, LLMEngine

    tokens = LoadedCheckpoint(None, tiny_model, preprocessor).tokens
    return LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=64, **config))


def test_a_sampling_fault_fails_that_request_only(tiny_model, preprocessor, monkeypatch):
    import monovl.engine.llm_engine as llm_engine
    from monovl.engine.sampling_params import SamplingParams
    from monovl.preprocessing.chat_template import ChatMessage
    from tests.engine_helpers import run

    def requests():
        prompt = preprocessor.process([ChatMessage.text("user", "Hi!")], [])
        seeded = SamplingParams(temperature=1.0, seed=11, max_tokens=6, ignore_eos=True)
        return [(name, prompt, seeded) for name in ("before", "bad", "after")]

    alone = {
        item[0]: run(_engine(tiny_model, preprocessor), {0: [item]})[(item[0], 0)].token_ids for item in requests()
    }
    real = llm_engine.sample

    def sample(logits, batch):
        if any(r.request_id == "bad" for r in batch) and batch[0].num_output_tokens >= 2:
            raise RuntimeError("injected sampling fault")
        return real(logits, batch)

    monkeypatch.setattr(llm_engine, "sample", sample)
    engine = _engine(tiny_model, preprocessor)
    done = run(engine, {0: requests()})
    assert done[("bad", 0)].finish_reason == "error" and "sampling" in done[("bad", 0)].error
    assert len(done[("bad", 0)].token_ids) == 2
    assert done[("before", 0)].token_ids == alone["before"] and done[("after", 0)].token_ids == alone["after"]
    assert engine.num_free_blocks == 64


def test_a_device_that_stops_computing_stops_the_engine(tiny_model, preprocessor, monkeypatch):
    from monovl.engine.async_llm import AsyncLLM
    from monovl.engine.core_client import CoreThread
    from monovl.engine.model_runner import DeviceError, ModelRunner
    from monovl.engine.output_processor import OutputProcessor
    from monovl.engine.output_streams import EngineDeadError
    from monovl.engine.sampling_params import SamplingParams
    from monovl.preprocessing.chat_template import ChatMessage

    engine = _engine(tiny_model, preprocessor)
    engine.runner.check_device()  # the CPU computes
    prompt = preprocessor.process([ChatMessage.text("user", "Hi!")], [])
    lost = {"now": False}
    execute, check = ModelRunner.execute, ModelRunner.check_device

    def failing_execute(self, chunks):
        if lost["now"]:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return execute(self, chunks)

    def failing_check(self):
        if lost["now"]:
            raise DeviceError("the device no longer runs work")
        return check(self)

    monkeypatch.setattr(ModelRunner, "execute", failing_execute)
    monkeypatch.setattr(ModelRunner, "check_device", failing_check)
    text = OutputProcessor(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids))
    async_engine = AsyncLLM.start(CoreThread(lambda: engine), text)
    params = SamplingParams(temperature=0, max_tokens=500, ignore_eos=True)

    async def main():
        died = asyncio.create_task(async_engine.wait_until_dead())
        streams = [async_engine.generate(f"r{k}", prompt, params) for k in range(3)]
        for stream in streams:
            await anext(stream)
        lost["now"] = True
        errors = []
        for stream in streams:
            with pytest.raises(EngineDeadError):
                async for _ in stream:
                    pass
            errors.append(True)
        return errors, await asyncio.wait_for(died, 5)

    errors, error = asyncio.run(main())
    assert errors == [True] * 3 and isinstance(error, DeviceError)
    assert not async_engine.is_running
    after = asyncio.run(_first(async_engine.generate("late", prompt, params)))
    assert isinstance(after, EngineDeadError)


async def _first(stream):
    try:
        return await anext(stream)
    except Exception as error:
        return error


def test_check_device_raises_for_a_device_that_cannot_compute():
    from monovl.engine.model_runner import DeviceError, ModelRunner

    class Model:
        device = torch.device("meta")

    class Runner:  # what check_device reads of a runner
        model = Model()

    with pytest.raises(DeviceError, match="meta"):
        ModelRunner.check_device(Runner())


def test_a_fault_while_building_one_request_s_output_fails_that_request_only(tiny_model, preprocessor, monkeypatch):
    from monovl.engine.detokenizer import IncrementalDetokenizer
    from monovl.engine.sampling_params import SamplingParams
    from monovl.preprocessing.chat_template import ChatMessage
    from tests.engine_helpers import run

    engine = _engine(tiny_model, preprocessor)
    prompt = preprocessor.process([ChatMessage.text("user", "Hi!")], [])
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    alone = run(_engine(tiny_model, preprocessor), {0: [("good", prompt, params)]})[("good", 0)].token_ids
    real = IncrementalDetokenizer.take_delta
    engine.add_request("bad", prompt, params)
    poisoned = engine.text.detokenizer("bad")

    def take_delta(self, finished):
        if self is poisoned and len(self.ids) >= 2:
            raise RuntimeError("injected output fault")
        return real(self, finished)

    monkeypatch.setattr(IncrementalDetokenizer, "take_delta", take_delta)
    done = run(engine, {0: [("good", prompt, params)]})
    assert done[("bad", 0)].finish_reason == "error" and done[("good", 0)].token_ids == alone
    assert engine.num_free_blocks == 64
