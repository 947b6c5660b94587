"""The host's share of an engine step: what a GPU waits for while Python lays out the next batch.

    python -m benchmarks.host_overhead [--requests 64] [--output-tokens 400]

A tiny model (its forward costs little) decodes `--requests` chats of engine_bench's workload at
once; after all have their first token, the script times a decode step's batch layout
(`ModelRunner.build_batch`), sampling, and whole engine steps with the model's forward timed apart,
so "rest" is scheduling, layout, sampling, detokenizing and outputs: the host work of a step.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.engine_bench import machine, workload
from benchmarks.profiling import timing
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampler import sample
from monovl.engine.step_layout import lay_out
from monovl.model.tiny_weights import TinyShape
from monovl.preprocessing.tiny_checkpoint import bench_checkpoint


def mean_ms(fn, repeats: int = 200) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=400)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    loaded = load_checkpoint(str(bench_checkpoint(TinyShape())), "float32", "cpu")
    config = EngineConfig(num_kv_blocks=16384, max_num_seqs=args.requests, max_num_batched_tokens=8192)
    engine = LLMEngine(loaded.model, loaded.tokens, config)
    for request in workload(loaded.preprocessor, args.requests, args.output_tokens):
        engine.add_request(*request)
    started: set[str] = set()
    while len(started) < args.requests:
        started.update(output.request_id for output in engine.step())

    chunks = engine.scheduler.schedule()  # a decode step's chunks, timed without running them
    requests = [chunk.request for chunk in chunks]
    logits = torch.randn(len(chunks), loaded.model.config.llm.vocab_size)
    runner = engine.runner
    layout = mean_ms(lambda: runner.build_batch(chunks, lay_out(chunks, runner.block_size, runner.img_context_id)))
    sampling = mean_ms(lambda: sample(logits, requests))

    totals = {"forward": 0.0}
    with timing(engine.runner.model, "forward", totals, "forward"):
        begun = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        step = (time.perf_counter() - begun) / args.steps * 1000
    forward = totals["forward"] / args.steps * 1000

    width = max(len(request.block_table) for request in requests)
    print(f"machine: {machine()}")
    print(f"{len(chunks)} decoding chats, block tables {width} wide; means over {args.steps} steps")
    print(f"batch layout {layout:.3f} ms, sampling {sampling:.3f} ms")
    print(f"engine step {step:.3f} ms: model forward {forward:.3f} ms, rest (host work) {step - forward:.3f} ms")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
