"""The Triton paged decode kernel equals the torch path (run by Triton's interpreter on the CPU)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")  # a test dependency on Linux x86_64; the kernel is optional at run time

KERNEL_VS_TORCH = textwrap.dedent("""
    import torch
    from monovl.model.paged_attention import causal_gqa, gather_context
    from monovl.model.triton_decode import PARTITIONS, paged_decode

    torch.manual_seed(0)
    worst = 0.0
    for heads, kv_heads, d, bs in [(4, 2, 16, 16), (8, 2, 32, 16), (3, 1, 24, 8), (4, 4, 16, 16), (16, 2, 8, 4)]:
        k_cache, v_cache = torch.randn(64, bs, kv_heads, d), torch.randn(64, bs, kv_heads, d)
        # tables of 40 blocks; the longest contexts span several partitions of the kernel
        lens = torch.tensor([1, 17, min(300, bs * 40), bs * 40, bs * 40 - 3], dtype=torch.int32)
        tables = torch.stack([torch.randperm(64)[:40] for _ in range(5)])
        q = torch.randn(5, heads, d)
        for partition in PARTITIONS:
            out = paged_decode(q, k_cache, v_cache, tables, lens, partition)
            for b in range(5):
                n = int(lens[b])
                ref = causal_gqa(
                    q[b : b + 1], gather_context(k_cache, tables[b], n), gather_context(v_cache, tables[b], n)
                )
                worst = max(worst, float((out[b] - ref[0]).abs().max()))
    print(worst)
""")

ENGINE_WITH_KERNEL = textwrap.dedent("""
    import json, sys
    from monovl.engine.llm_engine import EngineConfig, LLMEngine
    from monovl.preprocessing.chat_template import ChatMessage
    from monovl.checkpoint import load_checkpoint
    from tests.engine_helpers import greedy_tokens

    loaded = load_checkpoint(sys.argv[1], "float32", "cpu")
    pre = loaded.preprocessor
    prompts = [pre.process([ChatMessage.text("user", q)], []) for q in ("Hi!", "Tell me a story.", "2+2?")]
    result = {}
    for backend in ("torch", "triton"):
        engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(num_kv_blocks=64, attention_backend=backend))
        result[backend] = greedy_tokens(engine, prompts, max_tokens=6)
    print(json.dumps(result))
""")


def run_interpreted(code: str, *args: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_kernel_equals_gather_and_sdpa():
    # every partition size; the longest tables span 10 partitions of 64 and 3 of 256
    assert float(run_interpreted(KERNEL_VS_TORCH)) < 1e-5


@pytest.mark.parametrize(
    ("batch", "kv_heads", "table_tokens", "multiprocessors", "expected"),
    [
        (64, 8, 1600, 132, 256),  # a full batch: long partitions, fewest partials to merge
        (4, 8, 1600, 132, 128),  # 4 x 8 x 13 = 416 programs of 128 tokens
        (1, 8, 1600, 132, 64),  # one request spreads over 200 programs of 64
        (1, 1, 20000, 132, 256),  # 157 partitions of 128 would be more than the merge takes
        (1, 8, 1600, 1, 256),  # the CPU (interpreter): any size fills it
    ],
)
def test_partition_size_fills_the_device(monkeypatch, batch, kv_heads, table_tokens, multiprocessors, expected):
    triton_decode = pytest.importorskip("monovl.model.triton_decode")
    monkeypatch.setattr(triton_decode, "_multiprocessors", lambda device: multiprocessors)
    assert triton_decode.partition_size(batch, kv_heads, table_tokens, "cuda") == expected


def test_engine_gives_the_same_tokens_with_the_kernel(tiny_dir):
    result = json.loads(run_interpreted(ENGINE_WITH_KERNEL, str(tiny_dir)))
    assert result["triton"] == result["torch"]
    assert sorted(result["torch"]) == ["0", "1", "2"] and all(len(t) == 6 for t in result["torch"].values())


GRAPH_BUFFERS = textwrap.dedent("""
    import json, sys
    from monovl.engine.cuda_graphs import DecodeGraphs
    from monovl.engine.llm_engine import EngineConfig, LLMEngine
    from monovl.engine.model_runner import ModelRunner
    from monovl.engine.sampling_params import SamplingParams
    from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
    from monovl.checkpoint import load_checkpoint
    from tests.conftest import png_bytes

    loaded = load_checkpoint(sys.argv[1], "float32", "cpu")
    pre = loaded.preprocessor
    image = pre.load_image(png_bytes(500, 300, seed=3), max_tiles=1)
    prompts = [pre.process([ChatMessage.text("user", q)], []) for q in ("Hi!", "Tell me a story.", "2+2?", "Go")]
    prompts.append(pre.process([ChatMessage("user", (ImagePart(0), TextPart("What is it?")))], [image]))
    result, replays = {}, []
    for backend in ("torch", "graph"):
        config = EngineConfig(num_kv_blocks=256, attention_backend="torch" if backend == "torch" else "triton")
        engine = LLMEngine(loaded.model, loaded.tokens, config)
        if backend == "graph":
            runner = engine.runner
            graphs = DecodeGraphs(loaded.model, engine.kv_cache, runner.decode_kernel,
                                  scratch_block=256, max_batch=8, max_len=200, capture=False)
            run = graphs.run
            graphs.run = lambda layout: replays.append(len(layout.seq_lens)) or run(layout)
            engine.runner = ModelRunner(loaded.model, engine.kv_cache, loaded.tokens.img_context_id,
                                        runner.vision_cache, runner.decode_kernel, graphs)
        # Five at once: while the image chat (327 tokens, past max_len) runs, every step is eager; then
        # the text chats decode in batches of 4, 3 (padded to 4), 2 and 1 through the buffers.
        for k, (p, n) in enumerate(zip(prompts, (6, 9, 12, 15, 3))):
            engine.add_request(str(k), p, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        tokens = {}
        while engine.has_unfinished():
            for out in engine.step():
                tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        assert engine.num_free_blocks == 256
        result[backend] = tokens
    print(json.dumps({"tokens": result, "replays": sorted(set(replays))}))
""")


def test_graph_buffers_give_the_plain_tokens(tiny_dir):
    # The CUDA-graph decode path without the capture: static buffers, padding rows on the scratch
    # block, contexts past max_len back on the eager path. The graphs themselves run in test_cuda.py.
    result = json.loads(run_interpreted(GRAPH_BUFFERS, str(tiny_dir)))
    assert result["tokens"]["graph"] == result["tokens"]["torch"]
    assert result["replays"] == [1, 2, 3, 4], result["replays"]
