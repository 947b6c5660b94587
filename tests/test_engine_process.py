"""The engine core in its own process: the same streams as in-process, abort, errors, death, shutdown."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from monovl.checkpoint import build_engine
from monovl.engine.async_llm import AsyncLLM
from monovl.engine.core_client import CoreProcess
from monovl.engine.llm_engine import EngineConfig, RequestError
from monovl.engine.output_processor import OutputProcessor
from monovl.engine.output_streams import EngineDeadError
from monovl.engine.sampling_params import SamplingParams
from monovl.engine.structured_output import StructuredOutput
from monovl.model.config import ModelConfig
from monovl.model.loader import CheckpointError
from monovl.preprocessing.processor import Preprocessor
from tests.engine_helpers import FakeDecoder, blocks_free_after_leaving, mixed_workload, run

CONFIG = EngineConfig(num_kv_blocks=1024, max_num_batched_tokens=256)


def start(directory, config: EngineConfig = CONFIG) -> AsyncLLM:
    """As `monovl serve` starts one: the core sends token ids, the text is made on this side."""
    pre = Preprocessor(directory, ModelConfig.load(directory))
    text = OutputProcessor(pre.tokenizer, tuple(pre.stop_token_ids))
    build = partial(build_engine, directory, "float32", "cpu", "auto", config, detokenize=False)
    engine = AsyncLLM.start(CoreProcess(build), text)
    return engine


@pytest.fixture(scope="module")
def engine_process(tiny_dir):
    engine = start(tiny_dir)
    assert engine.info.num_blocks == 1024 and engine.info.device == "cpu"
    yield engine
    engine.shutdown()
    assert engine.stats().num_free_blocks == 1024


async def collect(engine, request_id, prompt, params):
    tokens: dict[int, list[int]] = {}
    text = ""
    async for output in engine.generate(request_id, prompt, params):
        tokens.setdefault(output.index, []).extend(output.new_token_ids)
        text += output.new_text
    return tokens, text


async def until(condition) -> bool:
    for _ in range(200):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


async def free_blocks_return(engine: AsyncLLM, expected: int) -> bool:
    return await until(lambda: engine.stats().num_free_blocks == expected)


def test_streams_carry_the_tokens_and_text_of_the_engine_in_this_process(engine_process, tiny_dir, preprocessor):
    workload = mixed_workload(preprocessor)[:10]  # text, images, two images in one prompt

    async def main():
        return await asyncio.gather(*(collect(engine_process, *item) for item in workload))

    results = asyncio.run(main())
    loaded = build_engine(tiny_dir, "float32", "cpu", "auto", EngineConfig(num_kv_blocks=512))
    for (request_id, prompt, params), (tokens, text) in zip(workload, results, strict=True):
        loaded.add_request(request_id, prompt, params)
        expected, expected_text = [], ""
        while loaded.has_unfinished():
            for out in loaded.step():
                expected += out.new_token_ids
                expected_text += out.new_text
        assert tokens == {0: expected} and text == expected_text


def test_a_stop_string_ends_its_completion_here_and_in_the_core_while_the_other_goes_on(
    engine_process, tiny_dir, preprocessor
):
    _, prompt, _ = mixed_workload(preprocessor)[0]
    loaded = build_engine(tiny_dir, "float32", "cpu", "auto", EngineConfig(num_kv_blocks=512))
    for seed in range(20):  # seeded completions, so the core samples what this engine does
        params = SamplingParams(n=2, temperature=1.0, seed=seed, max_tokens=200, ignore_eos=True)
        free = run(loaded, {0: [("free", prompt, params)]})
        first, other = free[("free", 0)].text, free[("free", 1)].text
        stop = first[20:23]
        if len(first) > 40 and first.find(stop) == 20 and stop not in other:
            break
    params = replace(params, stop=(stop,))
    expected = run(loaded, {0: [("stopped", prompt, params)]})
    assert expected[("stopped", 0)].text == first[:20] and expected[("stopped", 1)].text == other

    async def main():
        outputs, alone_after = [], None  # completion 1's tokens when the core was seen running it alone
        async for output in engine_process.generate("stopped", prompt, params):
            outputs.append(output)
            stopped = any(o.index == 0 and o.finished for o in outputs)
            if stopped and alone_after is None and engine_process.stats().running == 1:
                alone_after = sum(len(o.new_token_ids) for o in outputs if o.index == 1)
        return outputs, alone_after, await free_blocks_return(engine_process, 1024)

    outputs, alone_after, freed = asyncio.run(main())
    assert alone_after is not None and alone_after < 100  # not stopped, completion 0 would run to 200 too
    for index in (0, 1):
        mine = [o for o in outputs if o.index == index]
        want = expected[("stopped", index)]
        assert "".join(o.new_text for o in mine) == want.text
        assert [t for o in mine for t in o.new_token_ids] == want.token_ids
        assert [o.finish_reason for o in mine if o.finished] == [want.finish_reason]
    assert expected[("stopped", 0)].finish_reason == "stop" and expected[("stopped", 1)].finish_reason == "length"
    assert freed and len(engine_process._text) == 0  # the core stopped completion 0 and forgot both


def test_leaving_a_stream_aborts_it_in_the_core_and_frees_its_blocks(engine_process, preprocessor):
    _, prompt, _ = mixed_workload(preprocessor)[4]
    assert asyncio.run(blocks_free_after_leaving(engine_process, prompt, 1024))


def test_refusals_cross_back_as_request_errors_and_the_core_goes_on(engine_process, preprocessor):
    _, prompt, params = mixed_workload(preprocessor)[0]
    over = SamplingParams(max_tokens=engine_process.info.limits.max_model_len)

    async def main():
        first = asyncio.create_task(
            collect(engine_process, "dup", prompt, SamplingParams(max_tokens=300, ignore_eos=True))
        )
        await asyncio.sleep(0.05)
        with pytest.raises(RequestError, match="already running"):
            await collect(engine_process, "dup", prompt, params)
        with pytest.raises(RequestError, match="maximum context length") as refused:
            await collect(engine_process, "long", prompt, over)
        assert refused.value.param == "max_tokens" and refused.value.code == "context_length_exceeded"
        return await first

    tokens, _ = asyncio.run(main())
    assert len(tokens[0]) == 300 and engine_process.is_running


def test_grammars_compile_in_the_core_and_a_bad_one_is_a_request_error(engine_process, preprocessor):
    good = SamplingParams(structured_output=StructuredOutput.choice(["yes", "no"]), temperature=0)
    asyncio.run(engine_process.compile_grammar(good))
    bad = SamplingParams(structured_output=StructuredOutput.json_schema('{"type": "no-such-type"}'))
    with pytest.raises(RequestError) as refused:
        asyncio.run(engine_process.compile_grammar(bad))
    assert refused.value.param == "response_format" and refused.value.code == "invalid_grammar"
    _, prompt, _ = mixed_workload(preprocessor)[0]
    _, text = asyncio.run(collect(engine_process, "choice", prompt, good))
    assert text in ("yes", "no")


def test_a_build_error_raises_in_start(tmp_path):
    text = OutputProcessor(FakeDecoder(), ())
    core = CoreProcess(partial(build_engine, tmp_path / "missing", "float32", "cpu", "auto", CONFIG))
    with pytest.raises(CheckpointError):
        AsyncLLM.start(core, text)
    assert not core.alive()


def test_a_core_that_dies_fails_every_stream_and_wakes_the_watchers(tiny_dir, preprocessor):
    engine = start(tiny_dir)
    _, prompt, _ = mixed_workload(preprocessor)[0]
    params = SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True)

    async def main():
        died = asyncio.create_task(engine.wait_until_dead())
        streams = [engine.generate(f"r{k}", prompt, params) for k in range(3)]
        for stream in streams:
            await anext(stream)
        os.kill(engine.core._process.pid, signal.SIGKILL)  # as the OOM killer would
        for stream in streams:
            with pytest.raises(EngineDeadError):
                async for _ in stream:
                    pass
        error = await asyncio.wait_for(died, 10)
        with pytest.raises(EngineDeadError):
            await anext(engine.generate("after", prompt, params))
        return error

    error = asyncio.run(main())
    assert isinstance(error, EngineDeadError) and "signal 9" in str(error)
    assert not engine.is_running
    engine.shutdown()


ORPHANING = """
import os, sys
from functools import partial
from pathlib import Path
from monovl.engine.async_llm import AsyncLLM
from monovl.engine.core_client import CoreProcess
from monovl.engine.llm_engine import EngineConfig
from monovl.engine.output_processor import OutputProcessor
from monovl.checkpoint import build_engine
from tests.engine_helpers import FakeDecoder
build = partial(build_engine, sys.argv[1], "float32", "cpu", "auto", EngineConfig(num_kv_blocks=64), detokenize=False)
engine = AsyncLLM.start(CoreProcess(build), OutputProcessor(FakeDecoder(), ()))
print(engine.core._process.pid, flush=True)
os._exit(0)  # as if killed: no atexit, nothing stops the core but its pipe's other end closing
"""


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaps (a container's first process may not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_shutdown_stops_the_core_and_the_server_process_dying_ends_it_too(tiny_dir):
    engine = start(tiny_dir, EngineConfig(num_kv_blocks=64))
    engine.shutdown()
    assert engine.core._process.exitcode == 0

    server = subprocess.run(
        [sys.executable, "-c", ORPHANING, str(tiny_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert server.returncode == 0, server.stderr
    core = int(server.stdout.split()[-1])
    deadline = time.monotonic() + 20
    while not gone(core) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(core)
