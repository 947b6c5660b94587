"""CUDA paths: run where a GPU is present (scripts/gpu_check.sh on a lent device); skipped elsewhere."""

import pytest
import torch

from monovl.checkpoint import LoadedCheckpoint
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.engine.sampling_params import SamplingParams
from monovl.model.loader import load_model
from monovl.model.pixel_normalization import normalize_tiles
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.processor import Preprocessor
from tests.conftest import png_bytes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(16, 8, 128), (4, 2, 16), (8, 1, 64)])
def test_triton_decode_equals_the_torch_path(dtype, heads, kv_heads, d):
    from monovl.model.paged_attention import causal_gqa, gather_context
    from monovl.model.triton_decode import paged_decode

    g = torch.Generator(device=CUDA).manual_seed(0)
    k_cache = torch.randn(64, 16, kv_heads, d, device=CUDA, generator=g).to(dtype)
    v_cache = torch.randn(64, 16, kv_heads, d, device=CUDA, generator=g).to(dtype)
    tables = torch.stack([torch.randperm(64, device=CUDA)[:20] for _ in range(5)])
    lens = torch.tensor([1, 15, 16, 200, 320], device=CUDA, dtype=torch.int32)
    q = torch.randn(5, heads, d, device=CUDA, generator=g).to(dtype)
    out = paged_decode(q, k_cache, v_cache, tables, lens)
    for b in range(5):
        n = int(lens[b])
        ref = causal_gqa(q[b : b + 1], gather_context(k_cache, tables[b], n), gather_context(v_cache, tables[b], n))
        torch.testing.assert_close(
            out[b].float(),
            ref[0].float(),
            rtol=2e-2 if dtype == torch.bfloat16 else 1e-4,
            atol=2e-2 if dtype == torch.bfloat16 else 1e-4,
        )


def test_tile_normalization_on_the_gpu_gives_the_cpu_bits():
    pixels = torch.randint(0, 256, (3, 448, 448, 3), dtype=torch.uint8)
    pixels[0, 0, :256] = torch.arange(256, dtype=torch.uint8)[:, None]  # every value in every channel
    on_gpu = normalize_tiles(pixels.to(CUDA))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), normalize_tiles(pixels))


def greedy_tokens(directory, device, dtype, backend, cuda_graphs=False, fast="none") -> dict[str, list[int]]:
    model = load_model(directory, dtype, device, fast)
    loaded = LoadedCheckpoint(directory, model, Preprocessor(directory, model.config))
    pre = loaded.preprocessor
    image = pre.load_image(png_bytes(900, 400, seed=1))
    prompts = {
        "text": pre.process([ChatMessage.text("user", "Tell me a story.")], []),
        "image": pre.process([ChatMessage("user", (ImagePart(0), TextPart("Describe it.")))], [image]),
    }
    config = EngineConfig(num_kv_blocks=256, attention_backend=backend, cuda_graphs=cuda_graphs, max_num_seqs=8)
    engine = LLMEngine(model, loaded.tokens, config)
    assert (engine.runner.graphs is not None) == cuda_graphs
    for name, prompt in prompts.items():
        engine.add_request(name, prompt, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
    return tokens


def test_cuda_float32_gives_the_cpu_tokens_with_either_backend(tiny_dir):
    cpu = greedy_tokens(tiny_dir, torch.device("cpu"), torch.float32, "torch")
    assert greedy_tokens(tiny_dir, CUDA, torch.float32, "torch") == cpu
    assert greedy_tokens(tiny_dir, CUDA, torch.float32, "triton") == cpu


def test_bfloat16_runs_on_cuda(tiny_dir):
    tokens = greedy_tokens(tiny_dir, CUDA, torch.bfloat16, "auto")
    assert all(len(t) == 16 for t in tokens.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graphs_give_the_eager_tokens(tiny_dir, dtype):
    eager = greedy_tokens(tiny_dir, CUDA, dtype, "triton")
    assert greedy_tokens(tiny_dir, CUDA, dtype, "triton", cuda_graphs=True) == eager


def test_every_fast_path_gives_the_plain_tokens_in_float32(tiny_dir):
    plain = greedy_tokens(tiny_dir, CUDA, torch.float32, "torch")
    assert greedy_tokens(tiny_dir, CUDA, torch.float32, "triton", cuda_graphs=True, fast="auto") == plain


def test_grouped_experts_run_in_bfloat16():
    from monovl.model.fast_path import grouped_mm_works

    assert grouped_mm_works(CUDA, torch.bfloat16)


def test_fused_kernels_round_as_the_plain_path_in_bfloat16():
    import torch.nn.functional as F

    from monovl.model.fused_ops import rms_norm, rotary_and_cache, silu_mul
    from monovl.model.internlm2 import InternLM2RMSNorm
    from monovl.model.paged_attention import write_kv
    from monovl.model.rope import apply_rotary

    g = torch.Generator(device=CUDA).manual_seed(0)
    dtype = torch.bfloat16
    norm = InternLM2RMSNorm(2048, 1e-5).to(CUDA)
    norm.weight.data = (1 + 0.1 * torch.randn(2048, device=CUDA, generator=g)).to(dtype)
    x, residual = (torch.randn(64, 2048, device=CUDA, generator=g).to(dtype) for _ in range(2))
    out, total = rms_norm(x, norm.weight, norm.eps, residual)
    assert torch.equal(total, x + residual)
    # the sum of squares is reduced in another order: at most one bfloat16 step apart, rarely
    torch.testing.assert_close(out, norm(x + residual), rtol=8e-3, atol=1e-5)
    assert (out != norm(x + residual)).float().mean() < 0.01
    gate_up = torch.randn(64, 2 * 8192, device=CUDA, generator=g).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    assert (silu_mul(gate_up) != F.silu(gate) * up).float().mean() < 0.001
    heads, kv_heads, d, tokens = 16, 8, 128, 64
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d, device=CUDA, generator=g).to(dtype)
    angles = torch.randn(tokens, d // 2, device=CUDA, generator=g)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    caches = [torch.zeros(8, 16, kv_heads, d, device=CUDA, dtype=dtype) for _ in range(4)]
    slots = torch.randperm(128, device=CUDA)[:tokens]
    q = rotary_and_cache(qkv, cos, sin, caches[0], caches[1], slots, heads)
    packed = qkv.view(tokens, kv_heads, 4, d)
    write_kv(caches[2], caches[3], apply_rotary(packed[:, :, 2], cos, sin), packed[:, :, 3], slots)
    # Compiled for bfloat16, the kernel lands one bfloat16 step off torch on about 2% of elements
    # (seen on an H200: at most 0.0078 on values of |x| < 4); float32 is bit-exact (test above).
    plain_q = apply_rotary(packed[:, :, :2].reshape(tokens, heads, d), cos, sin)
    for ours, plain in ((q, plain_q), (caches[0], caches[2])):
        torch.testing.assert_close(ours, plain, rtol=2**-7, atol=2**-5)
        assert (ours != plain).float().mean() < 0.05
    assert torch.equal(caches[1], caches[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "seq_len"), [(300, 300), (37, 300), (1, 300)])
def test_prefill_attention_on_cuda_equals_the_cpu(dtype, n, seq_len):
    # Whole prompts (is_causal), chunks after cached context (causal_lower_right, flash on CUDA in bf16)
    # and single queries, against the CPU in float32.
    from monovl.model.paged_attention import causal_gqa

    g = torch.Generator().manual_seed(n)
    q, k, v = (
        torch.randn(n, 16, 128, generator=g),
        torch.randn(seq_len, 8, 128, generator=g),
        torch.randn(seq_len, 8, 128, generator=g),
    )
    expected = causal_gqa(q, k, v)
    ours = causal_gqa(*(t.to(CUDA, dtype) for t in (q, k, v))).float().cpu()
    tolerance = 4e-2 if dtype == torch.bfloat16 else 1e-4  # a wrong mask is off by O(1)
    torch.testing.assert_close(ours, expected, rtol=tolerance, atol=tolerance)


def test_a_cuda_server_answers_concurrent_chats_as_the_cpu_server_does(tiny_dir):
    # The server builds its engine (CUDA graphs included) in the engine process and replays there.
    import asyncio

    import httpx

    from benchmarks.server_process import ServerProcess
    from tests.hostile import data_url, image_message

    bodies = [{"messages": [{"role": "user", "content": f"Tell me about the number {k}."}]} for k in range(3)] + [
        {"messages": image_message(data_url(png_bytes(90 + 40 * k, 70, seed=k)))} for k in range(3)
    ]

    async def ask_all(url: str) -> list[str]:
        async with httpx.AsyncClient(timeout=120) as client:
            answers = await asyncio.gather(*(
                client.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0, "max_tokens": 12})
                for body in bodies
            ))  # fmt: skip
        assert all(a.status_code == 200 for a in answers)
        return [a.json()["choices"][0]["message"]["content"] for a in answers]

    contents = []
    for device in ("cuda", "cpu"):
        server = ServerProcess(tiny_dir, "--device", device, "--dtype", "float32")
        try:
            contents.append(asyncio.run(ask_all(server.url)))
        finally:
            server.stop()
    assert contents[0] == contents[1]
