"""Time to first token of one image chat alone, by tile count: the latency a user waits for.

    python -m benchmarks.image_ttft [--hidden 2048 --layers 24 ...] [--dtype auto] [--repeats 5] [--format JPEG]

Each measurement is a fresh image (no prefix or vision-cache hit), sent to an idle engine, timed
from add_request to the first token. Preprocessing (PNG decode, tiling, normalization and the
prompt: the server's worker pool, on the host CPU) is timed apart and printed beside it, with the
sum: what a user waits for, less HTTP and base64. The images are gradients with noise, saved as
PNG or, with --format JPEG, as a photo would come (quality 75); each line names the image's size.
One warm-up request first, so compilation is not counted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.engine_bench import image_bytes, machine
from benchmarks.roofline import REAL_2B, sync
from monovl.checkpoint import load_checkpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.tiny_checkpoint import add_shape_args, bench_checkpoint, shape_from_args

# width x height -> tiles (with the thumbnail) under the default 12-tile cap
SIZES = {1: (448, 448), 3: (900, 420), 7: (1344, 900), 13: (1600, 1200)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser, REAL_2B)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--format", default="PNG", choices=["PNG", "JPEG"], help="how the images are encoded")
    args = parser.parse_args()

    directory = bench_checkpoint(shape_from_args(args))
    loaded = load_checkpoint(str(directory), args.dtype, "auto")
    pre, device = loaded.preprocessor, loaded.model.device
    engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(
        num_kv_blocks=1024, max_num_seqs=8, max_num_batched_tokens=args.max_num_batched_tokens))  # fmt: skip
    print(f"machine: {machine()}")
    print(f"model: {directory.name}, {loaded.model.dtype}; chunk budget {args.max_num_batched_tokens} tokens")
    print(f"images: {args.format}")

    def first_token_seconds(seed: int, size: tuple[int, int]) -> tuple[float, float, int, int, int]:
        data = image_bytes(*size, seed=seed, image_format=args.format)
        started = time.perf_counter()
        image = pre.load_image(data)
        prompt = pre.process([ChatMessage("user", (ImagePart(0), TextPart("Describe the image.")))], [image])
        preprocessing = time.perf_counter() - started
        sync(device)
        started = time.perf_counter()
        engine.add_request(f"r{seed}", prompt, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
        while engine.has_unfinished():
            engine.step()
        sync(device)
        return time.perf_counter() - started, preprocessing, image.num_tiles, prompt.num_tokens, len(data)

    first_token_seconds(1000, SIZES[13])
    for tiles, size in SIZES.items():
        runs = [first_token_seconds(tiles * 100 + k, size) for k in range(args.repeats)]
        assert runs[0][2] == tiles, (tiles, runs[0][2])
        times = sorted(run[0] for run in runs)
        preprocessing = statistics.median(run[1] for run in runs)
        both = statistics.median(run[0] + run[1] for run in runs)
        print(
            f"{tiles:2d} tiles ({runs[0][3]:5d} prompt tokens, {runs[0][4] / 2**20:4.2f} MiB): "
            f"TTFT p50 {statistics.median(times) * 1000:8.1f} ms"
            f"  min {times[0] * 1000:8.1f} ms  max {times[-1] * 1000:8.1f} ms;"
            f"  preprocessing p50 {preprocessing * 1000:6.1f} ms; both p50 {both * 1000:8.1f} ms"
        )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
