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
    from model.paged_attention import causal_gqa, gather_context
    from model.triton_decode import paged_decode

    torch.manual_seed(0)
    worst = 0.0
    for heads, kv_heads, d, bs in [(4, 2, 16, 16), (8, 2, 32, 16), (3, 1, 24, 8), (4, 4, 16, 16), (16, 2, 8, 4)]:
        k_cache, v_cache = torch.randn(64, bs, kv_heads, d), torch.randn(64, bs, kv_heads, d)
        # tables of 40 blocks; the longest contexts span several partitions of the kernel
        lens = torch.tensor([1, 17, min(300, bs * 40), bs * 40, bs * 40 - 3], dtype=torch.int32)
        tables = torch.stack([torch.randperm(64)[:40] for _ in range(5)])
        q = torch.randn(5, heads, d)
        out = paged_decode(q, k_cache, v_cache, tables, lens)
        for b in range(5):
            n = int(lens[b])
            ref = causal_gqa(q[b : b + 1], gather_context(k_cache, tables[b], n), gather_context(v_cache, tables[b], n))
            worst = max(worst, float((out[b] - ref[0]).abs().max()))
    print(worst)
""")

ENGINE_WITH_KERNEL = textwrap.dedent("""
    import json, sys
    import torch
    from engine.llm_engine import EngineConfig, LLMEngine
    from engine.sampling_params import SamplingParams
    from preprocessing.chat_template import ChatMessage
    from server.model_loading import load_checkpoint

    loaded = load_checkpoint(sys.argv[1], "float32", "cpu")
    pre = loaded.preprocessor
    prompts = [pre.process([ChatMessage.text("user", q)], []) for q in ("Hi!", "Tell me a story.", "2+2?")]
    result = {}
    for backend in ("torch", "triton"):
        engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(num_kv_blocks=64, attention_backend=backend))
        for k, p in enumerate(prompts):
            engine.add_request(str(k), p, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        tokens = {}
        while engine.has_unfinished():
            for out in engine.step():
                tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
        result[backend] = tokens
    print(json.dumps(result))
""")


def run_interpreted(code: str, *args: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_kernel_equals_gather_and_sdpa():
    assert float(run_interpreted(KERNEL_VS_TORCH)) < 1e-5


def test_engine_gives_the_same_tokens_with_the_kernel(tiny_dir):
    result = json.loads(run_interpreted(ENGINE_WITH_KERNEL, str(tiny_dir)))
    assert result["triton"] == result["torch"]
    assert sorted(result["torch"]) == ["0", "1", "2"] and all(len(t) == 6 for t in result["torch"].values())
