"""Single-stream decode against the memory-bandwidth bound of the current device.

    python benchmarks/roofline.py [--hidden 2048 --layers 24 --heads 16 --kv-heads 8 --intermediate 8192]
                                  [--dtype auto] [--prompt-words 512] [--steps 64]

Each decode step must read every weight a text token uses (attention, one FFN expert, the norms,
the LM head) plus the request's KV cache. The bound is those bytes over the device's measured
read bandwidth; the script times real decode steps of one request through the engine and prints
the measured step time as a percentage of that bound, with the machine named.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.engine_bench import machine
from benchmarks.profiling import print_profile
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.model.fast_path import DEFAULT as FAST_PATH_DEFAULT
from monovl.model.mono_internvl import MonoInternVL
from monovl.model.onednn_linear import OneDNNLinear
from monovl.model.tiny_weights import TinyShape
from monovl.preprocessing.chat_template import ChatMessage
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args

# The LLM shape of OpenGVLab/Mono-InternVL-2B, its 92,553-row embedding and LM head included (the
# tiny tokenizer decodes the first thousand; the rest are rows with no text, as padding would be).
REAL_2B = TinyShape(hidden=2048, layers=24, heads=16, kv_heads=8, intermediate=8192, vit_hidden=256, vocab=92553)


def read_bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """Bytes per second of a streaming read (a sum over a large buffer), best of a few runs."""
    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(5):
        sync(device)
        started = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return x.numel() * 4 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_bytes(model: MonoInternVL, context: int) -> int:
    """Weights a text token reads per step (not the visual expert, vision model or embedding table) + KV."""

    def read(name: str) -> bool:
        skipped = ("vision_model", "mlp1", "language_model.model.tok_embeddings")
        return not name.startswith(skipped) and "feed_forward_ve" not in name

    total = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if read(name))
    # oneDNN's reordered weights are plain tensors, not parameters (model/onednn_linear.py)
    for name, module in model.named_modules():
        if isinstance(module, OneDNNLinear) and read(name):
            total += module.in_features * module.out_features * model.dtype.itemsize
    llm = model.config.llm
    kv = 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * context * model.dtype.itemsize
    return total + kv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser, REAL_2B)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-words", type=int, default=512, help="filler words in the prompt (the context)")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--fast-path", default=FAST_PATH_DEFAULT)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print the kernels of 10 forwards alone")
    args = parser.parse_args()

    directory = bench_checkpoint(shape_from_args(args))
    loaded = load_checkpoint(str(directory), args.dtype, "auto", args.fast_path)
    model, device = loaded.model, loaded.model.device
    prompt = loaded.preprocessor.process([ChatMessage.text("user", "word " * args.prompt_words)], [])
    engine = LLMEngine(model, loaded.tokens, EngineConfig(
        num_kv_blocks=(prompt.num_tokens + args.steps) // 16 + 8, max_num_batched_tokens=8192,
        attention_backend=args.attention_backend, cuda_graphs=not args.enforce_eager,
        max_num_seqs=1))  # fmt: skip
    engine.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=args.steps + 8, ignore_eos=True))
    engine.step()  # prefill and the first token
    for _ in range(4):  # warm-up decodes
        engine.step()
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    sync(device)
    step = (time.perf_counter() - started) / args.steps
    # The model's share of a step: the same decode forward again (it rewrites the same KV slot).
    chunks = engine.scheduler.schedule()
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.runner.execute(chunks)
    sync(device)
    forward = (time.perf_counter() - started) / args.steps
    if args.profile:
        sort_by = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print_profile(lambda: [engine.runner.execute(chunks) for _ in range(10)], sort_by)
    engine.abort_request("r")

    bandwidth = read_bandwidth(device)
    needed = decode_bytes(model, prompt.num_tokens + args.steps // 2)
    bound = needed / bandwidth
    print(f"machine: {machine()}")
    print(f"model: {directory.name}, {model.dtype}; context {prompt.num_tokens} tokens")
    graphs = engine.runner.graphs is not None
    print(f"attention {args.attention_backend}, fast path {engine.model.fast}, CUDA graphs {'on' if graphs else 'off'}")
    print(f"bytes per decode step: {needed / 2**30:.3f} GiB; measured read bandwidth {bandwidth / 2**30:.1f} GiB/s")
    print(f"bound: {bound * 1000:.3f} ms/token ({1 / bound:.1f} tok/s)")
    print(
        f"engine step (schedule, forward, sample, detokenize): {step * 1000:.3f} ms/token "
        f"= {bound / step:.0%} of the bound"
    )
    print(f"model forward and LM head alone: {forward * 1000:.3f} ms/token = {bound / forward:.0%} of the bound")


if __name__ == "__main__":
    main()
