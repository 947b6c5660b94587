"""The async front: streams per request from the engine thread, abort on leave, errors to the caller."""

import asyncio
import threading

import pytest
from monovl.engine import output_streams
from monovl.engine.async_engine import AsyncEngine
from monovl.engine.core_messages import EngineInfo
from monovl.engine.llm_engine import EngineConfig, LLMEngine, RequestError, TokenizerInfo
from monovl.engine.output_streams import EngineNotAnswering, _deliver
from monovl.engine.sampling_params import SamplingParams

from tests.engine_helpers import mixed_workload


@pytest.fixture
def async_engine(tiny_model, preprocessor):
    tokens = TokenizerInfo(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids), preprocessor.img_context_id)
    engine = AsyncEngine(
        lambda: LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=1024, max_num_batched_tokens=256))
    )
    engine.start()
    yield engine
    engine.shutdown()
    assert engine.engine.num_free_blocks == 1024


async def collect(engine: AsyncEngine, request_id, prompt, params):
    tokens: dict[int, list[int]] = {}
    async for output in engine.generate(request_id, prompt, params):
        tokens.setdefault(output.index, []).extend(output.new_token_ids)
    return tokens


def test_concurrent_streams_get_their_own_tokens(async_engine, preprocessor):
    workload = mixed_workload(preprocessor)[:8]

    async def main():
        return await asyncio.gather(*(collect(async_engine, *item) for item in workload))

    results = asyncio.run(main())
    sync = LLMEngine(async_engine.engine.model, async_engine.engine.tokens, EngineConfig(num_kv_blocks=512))
    for (request_id, prompt, params), result in zip(workload, results, strict=True):
        sync.add_request(request_id, prompt, params)
        expected = []
        while sync.has_unfinished():
            expected += [t for out in sync.step() for t in out.new_token_ids]
        assert result == {0: expected}


def test_each_step_wakes_the_event_loop_once_for_all_its_outputs(async_engine, preprocessor):
    workload = mixed_workload(preprocessor)[:6]
    engine = async_engine.engine
    step = engine.step
    outputs_per_step: list[int] = []

    def counted_step():
        outputs = step()
        outputs_per_step.append(len(outputs))
        return outputs

    engine.step = counted_step
    wakeups: list[int] = []

    async def main():
        loop = asyncio.get_running_loop()
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(callback, *args):
            if callback is _deliver:
                wakeups.append(len(args[0]))
            return call_soon_threadsafe(callback, *args)

        loop.call_soon_threadsafe = counted
        return await asyncio.gather(*(collect(async_engine, *item) for item in workload))

    asyncio.run(main())
    engine.step = step
    assert len(wakeups) == sum(1 for n in outputs_per_step if n) > 0
    assert sum(wakeups) == sum(outputs_per_step) and max(wakeups) > 1


def test_leaving_a_stream_aborts_and_frees_blocks(async_engine, preprocessor):
    _, prompt, _ = mixed_workload(preprocessor)[4]
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main():
        stream = async_engine.generate("leaver", prompt, params)
        async for output in stream:
            if output.new_token_ids:
                break
        await stream.aclose()
        for _ in range(100):
            if await async_engine.call(lambda: async_engine.engine.num_free_blocks) == 1024:
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(main())


def test_n_completions_stream_until_all_finish(async_engine, preprocessor):
    _, prompt, _ = mixed_workload(preprocessor)[0]
    result = asyncio.run(collect(async_engine, "n", prompt, SamplingParams(n=3, temperature=1.0, max_tokens=5)))
    assert sorted(result) == [0, 1, 2] and all(1 <= len(t) <= 5 for t in result.values())


def test_a_bad_request_raises_in_the_caller_and_the_engine_goes_on(async_engine, preprocessor):
    _, prompt, params = mixed_workload(preprocessor)[0]

    async def main():
        first = asyncio.create_task(
            collect(async_engine, "dup", prompt, SamplingParams(max_tokens=400, ignore_eos=True))
        )
        await asyncio.sleep(0.05)
        with pytest.raises(RequestError, match="already running"):
            await collect(async_engine, "dup", prompt, params)
        return await first

    assert len(asyncio.run(main())[0]) == 400
    assert async_engine.is_running


def test_the_engine_is_built_on_its_thread_and_a_build_error_raises_in_start(tiny_model, preprocessor):
    tokens = TokenizerInfo(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids), preprocessor.img_context_id)
    threads = []

    def build() -> LLMEngine:
        threads.append(threading.current_thread())
        return LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=64))

    engine = AsyncEngine(build)
    assert isinstance(engine.start(), EngineInfo) and threads == [engine._thread]
    engine.shutdown()

    def broken() -> LLMEngine:
        raise ValueError("no such checkpoint")

    failed = AsyncEngine(broken)
    with pytest.raises(ValueError, match="no such checkpoint"):
        failed.start()
    assert not failed.is_running


def test_a_stuck_engine_answers_a_new_request_at_the_deadline_and_forgets_it(async_engine, preprocessor, monkeypatch):
    monkeypatch.setattr(output_streams, "TAKE_DEADLINE_S", 0.5)
    _, prompt, params = mixed_workload(preprocessor)[0]
    stuck, release = threading.Event(), threading.Event()

    def hold() -> None:
        stuck.set()
        release.wait(10)

    async def main() -> None:
        holding = async_engine.call(hold)
        while not stuck.is_set():
            await asyncio.sleep(0.01)
        with pytest.raises(EngineNotAnswering, match=r"within 0\.5 s"):
            await collect(async_engine, "late", prompt, params)
        release.set()
        await holding
        assert await async_engine.call(lambda: async_engine.engine.has_unfinished()) is False
        assert await collect(async_engine, "after", prompt, params)

    asyncio.run(main())
