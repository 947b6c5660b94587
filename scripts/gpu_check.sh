#!/usr/bin/env bash
# One device call: CUDA tests, then the roofline, image TTFT, engine and serving figures on the real 2B shape.
#   device run: bash scripts/gpu_check.sh   (writes logs to $OUT when set)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/monovl-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
shape=(--hidden 2048 --layers 24 --heads 16 --kv-heads 8 --intermediate 8192 --vocab 92553 --dtype bfloat16)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# The CUDA tests, and a real device-side assert: the server must end its streams and exit 1.
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py "tests/test_isolation.py::test_a_dead_device_ends_open_requests_and_the_process_exits_1" \
    2>&1 | tee "$out/cuda_tests.log"
{
    python3 -m benchmarks.roofline "${shape[@]}" --steps 128 --profile
    python3 -m benchmarks.roofline "${shape[@]}" --steps 128 --fast-path none
    python3 -m benchmarks.roofline "${shape[@]}" --steps 128 --enforce-eager
} 2>&1 | tee "$out/roofline.log"
{
    python3 -m benchmarks.image_ttft "${shape[@]}"
    python3 -m benchmarks.image_ttft "${shape[@]}" --format JPEG
} 2>&1 | tee "$out/image_ttft.log"
python3 -m benchmarks.decode_kernel 2>&1 | tee "$out/decode_kernel.log"
python3 -m benchmarks.engine_bench "${shape[@]}" --requests 64 --output-tokens 128 --max-num-batched-tokens 8192 \
    2>&1 | tee "$out/engine_bench.log"
# Batching must not change greedy tokens: float32, where bf16's rounding ties cannot hide a bug.
python3 -m benchmarks.engine_bench "${shape[@]}" --dtype float32 --requests 16 --output-tokens 32 \
    --max-num-batched-tokens 8192 2>&1 | tee "$out/engine_bench_fp32.log"
# The serving benchmark over HTTP on the real shape, against one request at a time. Its checkpoint
# keeps the tokenizer's vocabulary: the client times text chunks, and a random model with the padded
# 92,553-row head mostly samples ids past the tokenizer, which have no text.
python3 -m benchmarks.serve_bench "${shape[@]}" --vocab 0 --requests 64 --concurrency 1 64 --output-tokens 128 \
    --out "$out/serve_bench" 2>&1 | tee "$out/serve_bench.log"
# The server against its engine alone, same chats, 1 and 64 streams (within 10% of it is the aim).
python3 -m benchmarks.http_tax --hidden 2048 --layers 24 --heads 16 --kv-heads 8 --intermediate 8192 --vocab 0 \
    --streams 1 64 --output-tokens 128 --rounds 3 --max-num-batched-tokens 8192 2>&1 | tee "$out/http_tax.log"
