"""The engine's front end over a core on a thread: streams per request, abort on leave, errors to
the caller, a deadline for a stuck core (tests/test_engine_process.py has the core in a process)."""

import asyncio
import threading

import pytest

from monovl.engine import output_streams
from monovl.engine.async_llm import AsyncLLM
from monovl.engine.core_client import CoreThread
from monovl.engine.core_messages import EngineInfo
from monovl.engine.llm_engine import EngineConfig, LLMEngine, RequestError, TokenizerInfo
from monovl.engine.output_processor import OutputProcessor
from monovl.engine.output_streams import EngineNotAnswering, _deliver
from monovl.engine.sampling_params import SamplingParams
from tests.engine_helpers import blocks_free_after_leaving, mixed_workload


def front_end(build, preprocessor) -> AsyncLLM:
    text = OutputProcessor(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids))
    return AsyncLLM.start(CoreThread(build), text)


def tokens_of(preprocessor) -> TokenizerInfo:
    return TokenizerInfo(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids), preprocessor.img_context_id)


@pytest.fixture
def async_engine(tiny_model, preprocessor):
    config = EngineConfig(num_kv_blocks=1024, max_num_batched_tokens=256)
    engine = front_end(lambda: LLMEngine(tiny_model, tokens_of(preprocessor), config, detokenize=False), preprocessor)
    yield engine
    engine.shutdown()
    assert engine.core.engine.num_free_blocks == 1024


async def idle(engine: AsyncLLM) -> bool:
    """Whether the core's stats come to show every block free and nothing to run, within a second."""
    for _ in range(100):
        stats = engine.stats()
        if stats.num_free_blocks == 1024 and stats.running == stats.waiting == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def collect(engine: AsyncLLM, request_id, prompt, params):
    tokens: dict[int, list[int]] = {}
    async for output in engine.generate(request_id, prompt, params):
        tokens.setdefault(output.index, []).extend(output.new_token_ids)
    return tokens


def test_concurrent_streams_get_their_own_tokens(async_engine, preprocessor):
    workload = mixed_workload(preprocessor)[:8]

    async def main():
        return await asyncio.gather(*(collect(async_engine, *item) for item in workload))

    results = asyncio.run(main())
    sync = LLMEngine(async_engine.core.engine.model, async_engine.core.engine.tokens, EngineConfig(num_kv_blocks=512))
    for (request_id, prompt, params), result in zip(workload, results, strict=True):
        sync.add_request(request_id, prompt, params)
        expected = []
        while sync.has_unfinished():
            expected += [t for out in sync.step() for t in out.new_token_ids]
        assert result == {0: expected}


def test_each_step_wakes_the_event_loop_once_for_all_its_outputs(async_engine, preprocessor):
    workload = mixed_workload(preprocessor)[:6]
    engine = async_engine.core.engine
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
    assert asyncio.run(blocks_free_after_leaving(async_engine, prompt, 1024))


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
    threads = []

    def build() -> LLMEngine:
        threads.append(threading.current_thread())
        return LLMEngine(tiny_model, tokens_of(preprocessor), EngineConfig(num_kv_blocks=64), detokenize=False)

    engine = front_end(build, preprocessor)
    assert isinstance(engine.info, EngineInfo) and threads == [engine.core._thread]
    engine.shutdown()
    assert not engine.core.alive()

    def broken() -> LLMEngine:
        raise ValueError("no such checkpoint")

    core = CoreThread(broken)
    with pytest.raises(ValueError, match="no such checkpoint"):
        AsyncLLM.start(core, OutputProcessor(preprocessor.tokenizer, ()))
    core.join(5)
    assert not core.alive()


def test_a_stuck_engine_answers_a_new_request_at_the_deadline_and_forgets_it(async_engine, preprocessor, monkeypatch):
    monkeypatch.setattr(output_streams, "TAKE_DEADLINE_S", 0.5)
    _, prompt, params = mixed_workload(preprocessor)[0]
    engine = async_engine.core.engine
    step = engine.step
    stuck, release = threading.Event(), threading.Event()

    def held_step():
        stuck.set()
        release.wait(10)
        return step()

    async def main() -> None:
        engine.step = held_step  # the core's next step hangs until released
        holder = asyncio.create_task(collect(async_engine, "holder", prompt, params))
        while not stuck.is_set():
            await asyncio.sleep(0.01)
        with pytest.raises(EngineNotAnswering, match=r"within 0\.5 s"):
            await collect(async_engine, "late", prompt, params)
        engine.step = step
        release.set()
        await holder
        assert await idle(async_engine)  # "late" was taken after the deadline, and aborted at once
        assert await collect(async_engine, "after", prompt, params)

    asyncio.run(main())
