"""Offline throughput: the batched engine against one request at a time, on the same model.

    python -m benchmarks.engine_bench [--requests 32] [--output-tokens 128] [--hidden 1024 --layers 8]

Makes a mid-size random checkpoint with `make-tiny-checkpoint`'s options (cached under
/tmp/monovl-bench), builds a mixed workload (text chats and image chats of 1 to 3 tiles, all
arriving at once), runs it through the engine with continuous batching and then through the same
engine limited to one request at a time with no prefix caching, checks that both give the same
greedy tokens, and prints output tokens/s, time to first token and their ratios, with the machine.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.profiling import print_profile
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.model.tiny_weights import TinyShape
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args

# The mid-size random model of the CPU figures: 231M parameters.
MID_SIZE = TinyShape(hidden=1024, layers=8, heads=16, kv_heads=8, intermediate=4096, vit_hidden=256)

QUESTIONS = [
    "Describe the image in detail.",
    "What colors do you see?",
    "Write a short poem about this.",
    "Hello! Can you tell me a story about a robot who loves to paint?",
    "Explain how a paged KV cache works.",
    "List three facts about the moon.",
]


def machine() -> str:
    """The device and torch; for a CPU its model name and widest vector unit, which is what its
    GEMMs run on (a virtual CPU's model name may not tell one generation from another)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    cpu = f"{cpu} ({vector})" if vector else cpu
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def image_bytes(width: int, height: int, seed: int, image_format: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, 128 + 60 * np.sin(x / 40 + y / 25)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def workload(pre, count: int, output_tokens: int):
    """Chats as users send them: a quarter text, a quarter follow-up turns of those, a quarter first
    questions about an image (1 to 4 tiles), a quarter follow-up turns about the same images."""
    sizes = [(300, 300), (900, 420), (420, 420), (1300, 440)]  # 1, 3, 1, 4 tiles
    text, chats = ChatMessage.text, []
    for k in range(count):
        question = QUESTIONS[k % len(QUESTIONS)]
        kind, slot = k % 4, k // 4
        if kind in (0, 1):
            first = text("user", f"{question} (chat {slot})")
            turns = [first] if kind == 0 else [first, text("assistant", "Sure. " * 20), text("user", "Go on.")]
            chats.append((turns, []))
        else:
            width, height = sizes[slot % len(sizes)]
            image = pre.load_image(image_bytes(width, height, seed=slot % len(sizes)), max_tiles=3)
            first = ChatMessage("user", (ImagePart(0), TextPart(question)))
            turns = (
                [first] if kind == 2 else [first, text("assistant", "It shows colors. " * 10), text("user", "More?")]
            )
            chats.append((turns, [image]))
    params = SamplingParams(temperature=0.0, max_tokens=output_tokens, ignore_eos=True)
    return [(f"req-{k}", pre.process(turns, images), params) for k, (turns, images) in enumerate(chats)]


def warm_up(engine: LLMEngine, pre) -> None:
    """A text and an image chat unlike the workload's, so kernels compile before the clock starts."""
    image = pre.load_image(image_bytes(640, 480, seed=99), max_tiles=3)
    chats = [
        ([ChatMessage.text("user", "Warm up.")], []),
        ([ChatMessage("user", (ImagePart(0), TextPart("?")))], [image]),
    ]
    for k, (turns, images) in enumerate(chats):
        engine.add_request(f"warm-{k}", pre.process(turns, images), SamplingParams(max_tokens=8, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()


def run(engine: LLMEngine, requests, one_at_a_time: bool = False, profile: bool = False) -> dict:
    """All requests through the engine; TTFT counts from the moment all of them arrived. With
    `profile`, the first step runs under the profiler (and its figures include the profiler's cost)."""
    start = time.perf_counter()
    first_token: dict[str, float] = {}
    tokens: dict[str, list[int]] = {}
    batches = [[r] for r in requests] if one_at_a_time else [requests]
    for batch in batches:
        for request_id, prompt, params in batch:
            engine.add_request(request_id, prompt, params)
        pending = print_profile(engine.step, "cpu_time_total") if profile else []
        while pending or engine.has_unfinished():
            outputs, pending = pending or engine.step(), []
            for output in outputs:
                if output.new_token_ids and output.request_id not in first_token:
                    first_token[output.request_id] = time.perf_counter() - start
                tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
    elapsed = time.perf_counter() - start
    total = sum(len(t) for t in tokens.values())
    ttft = sorted(first_token.values())
    return {
        "elapsed": elapsed,
        "tokens": tokens,
        "tok_s": total / elapsed,
        "ttft_p50": statistics.median(ttft),
        "ttft_mean": statistics.fmean(ttft),
        "output_tokens": total,
    }


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=128)
    add_shape_args(parser, MID_SIZE)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="print where the batched run's first step (the prefill) spends its time"
    )
    args = parser.parse_args()

    directory = bench_checkpoint(shape_from_args(args))
    loaded = load_checkpoint(str(directory), args.dtype, "auto")
    requests = workload(loaded.preprocessor, args.requests, args.output_tokens)
    prompt_tokens = sum(p.num_tokens for _, p, _ in requests)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"machine: {machine()}")
    print(
        f"model: {directory.name} ({params / 1e6:.0f}M parameters, {loaded.model.dtype}); "
        f"{len(requests)} requests, {prompt_tokens} prompt tokens, {args.output_tokens} output tokens each"
    )

    batched_engine = LLMEngine(
        loaded.model,
        loaded.tokens,
        EngineConfig(
            num_kv_blocks=(prompt_tokens + args.requests * args.output_tokens) // 16 + 4 * args.requests,
            max_num_seqs=args.requests,
            max_num_batched_tokens=args.max_num_batched_tokens,
        ),
    )
    warm_up(batched_engine, loaded.preprocessor)
    batched = run(batched_engine, requests, profile=args.profile)
    print(
        f"engine:         {batched['tok_s']:8.1f} output tok/s  TTFT p50 {batched['ttft_p50']:6.2f} s  "
        f"mean {batched['ttft_mean']:6.2f} s  total {batched['elapsed']:6.1f} s"
    )
    if args.skip_baseline:
        return
    single_engine = LLMEngine(
        loaded.model,
        loaded.tokens,
        EngineConfig(
            num_kv_blocks=max(p.num_tokens for _, p, _ in requests) // 16 + args.output_tokens // 16 + 4,
            max_num_seqs=1,
            max_num_batched_tokens=8192,
            enable_prefix_caching=False,
            vision_cache_memory=0,
        ),
    )
    warm_up(single_engine, loaded.preprocessor)
    single = run(single_engine, requests, one_at_a_time=True)
    print(
        f"one at a time:  {single['tok_s']:8.1f} output tok/s  TTFT p50 {single['ttft_p50']:6.2f} s  "
        f"mean {single['ttft_mean']:6.2f} s  total {single['elapsed']:6.1f} s"
    )
    pairs = [(batched["tokens"][rid], single["tokens"][rid]) for rid, _, _ in requests]
    same = sum(a == b for a, b in pairs)
    # bfloat16 GEMMs round differently at other batch sizes, and a random model's top logits are close:
    # there greedy paths part after a while. How long they agree says more than whether they all do.
    agree = statistics.fmean(common_prefix(a, b) for a, b in pairs)
    print(
        f"ratio: {batched['tok_s'] / single['tok_s']:.2f}x output tokens/s; "
        f"TTFT p50 {single['ttft_p50'] / batched['ttft_p50']:.2f}x lower; "
        f"same greedy tokens: {same}/{len(requests)} (first {agree:.1f} of {args.output_tokens} agree on average)"
    )


if __name__ == "__main__":
    main()
