"""The serving benchmark's chats through the engine alone, no HTTP: where a server's time must go.

    python -m benchmarks.serve_workload [--requests 32] [--output-tokens 96] [--dtype auto] [shape flags]

Prepares `serve_bench`'s chats with the server's own code (the same prompts and images), then,
all 32 arriving at once on a fresh engine: the prompt tokens without any cache, the tokens the
engine computes with its caches, how long prefill takes until every chat has its first token
(and the image chats' TTFT p50), the mean decode step once all are decoding, and the whole run.
These bound what any server on this machine can reach for the workload.

`--run-on-another-thread` runs the chats on a thread other than the one that loaded the model, as
the server did before it built its engine on the engine thread (engine/core_client.py says why
that is slower).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from benchmarks.engine_bench import MID_SIZE, machine
from benchmarks.serve_bench import workload
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args
from monovl.server.chat import preprocess, to_conversation
from monovl.server.image_urls import decode_data_url
from monovl.server.protocol import ChatCompletionRequest


def run(engine: LLMEngine, chats, params: SamplingParams) -> tuple:
    """All chats arriving at once: (first-token seconds by id, cached tokens, prefill s, decode steps,
    decode s, whole s)."""
    started = time.perf_counter()
    for request_id, _, prompt in chats:
        engine.add_request(request_id, prompt, params)
    first_token: dict[str, float] = {}
    cached = 0
    while len(first_token) < len(chats):
        for output in engine.step():
            if output.request_id not in first_token:
                first_token[output.request_id] = time.perf_counter() - started
                cached += output.num_cached_tokens
    prefill = time.perf_counter() - started
    decode_started, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    decode = time.perf_counter() - decode_started
    total = time.perf_counter() - started
    return first_token, cached, prefill, steps, decode, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=96)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--run-on-another-thread", action="store_true", help="load on this thread, run on another")
    add_shape_args(parser, MID_SIZE)
    args = parser.parse_args()

    directory = bench_checkpoint(shape_from_args(args))
    loaded = load_checkpoint(str(directory), args.dtype, "auto")
    chats = []
    for k, (kind, messages) in enumerate(workload(args.requests)):
        conversation = to_conversation(ChatCompletionRequest(messages=messages), max_images=8, max_chars=2**62)
        images = [decode_data_url(url, 2**30, param) for url, param in conversation.images]
        chats.append((str(k), kind, preprocess(loaded.preprocessor, conversation, images, None)))
    config = EngineConfig(
        num_kv_blocks=8192, max_num_seqs=args.requests, max_num_batched_tokens=args.max_num_batched_tokens
    )
    engine = LLMEngine(loaded.model, loaded.tokens, config)
    params = SamplingParams(temperature=0, max_tokens=args.output_tokens, ignore_eos=True)

    if args.run_on_another_thread:
        runs: list[tuple] = []
        thread = threading.Thread(target=lambda: runs.append(run(engine, chats, params)))
        thread.start()
        thread.join()
        first_token, cached, prefill, steps, decode, total = runs[0]
    else:
        first_token, cached, prefill, steps, decode, total = run(engine, chats, params)

    prompt_tokens = sum(prompt.num_tokens for _, _, prompt in chats)
    computed = prompt_tokens - cached
    image_ttft = statistics.median(first_token[rid] for rid, kind, _ in chats if kind == "image")
    print(f"machine: {machine()}")
    print(f"model: {directory.name} ({loaded.model.dtype}); chunk budget {args.max_num_batched_tokens} tokens")
    print(f"{len(chats)} chats: {prompt_tokens} prompt tokens without caches, {computed} computed with them")
    print(
        f"until every chat has its first token: {prefill:.1f} s ({computed / prefill:.0f} prompt tokens/s); "
        f"image chats' TTFT p50 {image_ttft:.1f} s"
    )
    print(f"then {steps} decode steps of up to {len(chats)} chats: {decode / max(steps, 1) * 1000:.0f} ms a step")
    output_tokens = len(chats) * args.output_tokens
    print(f"whole run: {total:.1f} s, {output_tokens / total:.1f} output tok/s")


if __name__ == "__main__":
    main()
