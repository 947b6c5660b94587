"""Grammar compiles: a time limit that kills the compile, a cache bounded in bytes, shared and
refused compiles, shutdown, and an engine that steps while a request's grammar compiles."""

import os
import sys
import time
from pathlib import Path

import pytest

from monovl.checkpoint import build_engine
from monovl.engine.grammar_compiler import CompilerBusy, CompilerClosed, GrammarCompiler
from monovl.engine.grammar_probe import GrammarProbe, ProbeUnavailable
from monovl.engine.llm_engine import UNAVAILABLE, EngineConfig, grammar_refusal
from monovl.engine.sampling_params import SamplingParams
from monovl.engine.structured_output import (
    GrammarError,
    Grammars,
    GrammarTooComplex,
    StructuredOutput,
    Vocabulary,
    resident_bytes,
)
from monovl.preprocessing.tokenizer import Tokenizer
from tests.engine_helpers import mixed_workload


def optional_properties(count: int, prefix: str = "p") -> StructuredOutput:
    """An object of many optional integer properties: slower to compile the more it has."""
    properties = {f"{prefix}{i}": {"type": "integer"} for i in range(count)}
    return StructuredOutput.json_schema({"type": "object", "properties": properties})


def small_schema(name: str) -> StructuredOutput:
    schema = {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]}
    return StructuredOutput.json_schema(schema)


@pytest.fixture(scope="module")
def vocabulary(tiny_dir) -> Vocabulary:
    return Vocabulary(Tokenizer(tiny_dir).text_pieces(), (2,))


def probe_processes() -> list[int]:
    """Live (not zombie) probe processes that are this process's children."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == os.getpid() and state != "Z" and b"engine.grammar_probe" in command:
            found.append(int(proc.name))
    return found


def test_a_slow_grammar_is_refused_at_the_limit_and_its_compile_killed(vocabulary):
    compiler = GrammarCompiler(Grammars(vocabulary), timeout=0.5)
    try:
        assert compiler.submit(small_schema("warm")).result(timeout=120) is not None  # the probe started
        probe = probe_processes()
        assert len(probe) == 1
        started = time.monotonic()
        with pytest.raises(GrammarTooComplex, match=r"too complex.*0\.5 s"):
            compiler.submit(optional_properties(4000)).result(timeout=60)
        assert time.monotonic() - started < 3.0
        assert probe[0] not in probe_processes()
        assert not compiler.grammars.cached(optional_properties(4000))
        # The next compile starts a new probe and is answered.
        assert compiler.submit(small_schema("after")).result(timeout=120) is not None
        with pytest.raises(GrammarError, match="Unsupported type"):
            compiler.submit(StructuredOutput.json_schema({"type": "strin"})).result(timeout=60)
    finally:
        compiler.shutdown()
    assert not probe_processes()


def test_a_compile_that_cannot_start_in_time_is_busy_and_equal_specs_share_one(vocabulary):
    compiler = GrammarCompiler(Grammars(vocabulary), timeout=0.5)
    try:
        compiler.submit(small_schema("warm")).result(timeout=120)
        slow = compiler.submit(optional_properties(4000))
        assert compiler.submit(optional_properties(4000)) is slow
        behind = compiler.submit(small_schema("behind"))
        with pytest.raises(CompilerBusy, match="busy"):
            behind.result(timeout=60)
        with pytest.raises(GrammarTooComplex):
            slow.result(timeout=60)
    finally:
        compiler.shutdown()


def test_shutdown_answers_every_waiting_compile_and_kills_the_probe(vocabulary):
    compiler = GrammarCompiler(Grammars(vocabulary), timeout=60)
    compiler.submit(small_schema("warm")).result(timeout=120)
    slow = compiler.submit(optional_properties(6000))
    queued = compiler.submit(small_schema("queued"))
    time.sleep(0.5)
    started = time.monotonic()
    compiler.shutdown()
    for future in (slow, queued):
        with pytest.raises(CompilerClosed):
            future.result(timeout=5)
    assert time.monotonic() - started < 5
    assert not probe_processes()
    with pytest.raises(CompilerClosed):
        compiler.submit(small_schema("late")).result(timeout=1)


def test_the_cache_is_bounded_in_bytes_and_xgrammar_keeps_none(vocabulary):
    one = resident_bytes(Grammars(vocabulary).compile(optional_properties(60, "a")))
    grammars = Grammars(vocabulary, cache_bytes=3 * one)
    specs = [optional_properties(60, f"s{i}_") for i in range(8)]
    for spec in specs:
        grammars.compile(spec)
        assert grammars.cached_bytes <= 3 * one * 1.1
    assert grammars.cached(specs[-1]) is not None and grammars.cached(specs[0]) is None
    assert grammars.compiler(json=True).get_cache_size_bytes() == 0


def test_the_engine_steps_while_a_grammar_compiles_and_a_refused_one_ends_its_request(tiny_dir, preprocessor):
    config = EngineConfig(num_kv_blocks=256, max_num_batched_tokens=256, grammar_compile_timeout=1.0)
    engine = build_engine(tiny_dir, "float32", "cpu", "auto", config)
    try:
        engine.compile_grammar(SamplingParams(structured_output=small_schema("warm"))).result(timeout=120)
        _, prompt, _ = mixed_workload(preprocessor)[0]
        engine.add_request("plain", prompt, SamplingParams(max_tokens=40, ignore_eos=True))
        slow = SamplingParams(structured_output=optional_properties(4000), max_tokens=5, n=2)
        engine.add_request("slow", prompt, slow)
        plain_tokens, slow_outputs, steps_while_compiling = 0, [], 0
        while engine.has_unfinished():
            compiling = "slow" in engine.awaiting_grammar
            for output in engine.step():
                if output.request_id == "plain":
                    plain_tokens += len(output.new_token_ids)
                    steps_while_compiling += compiling
                else:
                    slow_outputs.append(output)
        assert plain_tokens == 40 and steps_while_compiling >= 5
        assert sorted(o.index for o in slow_outputs) == [0, 1]
        assert all(o.finished and o.finish_reason == "error" and "too complex" in o.error for o in slow_outputs)
        assert engine.num_free_blocks == 256
    finally:
        engine.close()


def test_a_probe_that_cannot_start_is_the_servers_fault_not_the_specs(vocabulary, monkeypatch):
    monkeypatch.setattr(GrammarProbe, "command", (sys.executable, "-c", "raise SystemExit(3)"))
    compiler = GrammarCompiler(Grammars(vocabulary), timeout=5)
    try:
        with pytest.raises(ProbeUnavailable, match="did not start"):
            compiler.submit(small_schema("unstarted")).result(timeout=30)
        refusal = grammar_refusal(ProbeUnavailable("x"))
        assert refusal.code == "grammar_compiler_unavailable" and refusal.code in UNAVAILABLE
    finally:
        compiler.shutdown()
