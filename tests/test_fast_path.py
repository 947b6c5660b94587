"""Every fast-path kernel equals the plain torch path (Triton kernels run by the interpreter on the CPU).

The interpreter emulates bfloat16 with its own rounding, so here bfloat16 is held to a loose
tolerance; tests/test_cuda.py holds the compiled kernels to the plain path's bits on a GPU.
"""

import json

import pytest
import torch

from monovl.model.fast_path import FastPath, grouped_mm_works
from monovl.model.forward_batch import ExpertRows
from monovl.model.internlm2 import InternLM2DecoderLayer
from monovl.model.loader import assign_weights
from monovl.model.onednn_linear import OneDNNLinear, onednn_linear_works, reorder_linears
from tests.test_decoder_math import config, randomize
from tests.test_triton_decode import run_interpreted

KERNELS_VS_PLAIN = """
import json
import torch
import torch.nn.functional as F
from monovl.model.fused_ops import rms_norm, rotary_and_cache, silu_mul
from monovl.model.internlm2 import InternLM2RMSNorm
from monovl.model.paged_attention import write_kv
from monovl.model.rope import apply_rotary

torch.manual_seed(0)
worst = {}

def note(name, dtype, ours, plain):
    key = f"{name}/{str(dtype).split('.')[-1]}"
    worst[key] = max(worst.get(key, 0.0), float((ours.float() - plain.float()).abs().max()))

for dtype in (torch.float32, torch.bfloat16):
    norm = InternLM2RMSNorm(96, 1e-6)
    norm.weight.data = 1 + 0.1 * torch.randn(96)
    norm = norm.to(dtype)
    x, residual = torch.randn(7, 96).to(dtype), torch.randn(7, 96).to(dtype)
    out, total = rms_norm(x, norm.weight, norm.eps, residual)
    note("norm+residual", dtype, out, norm(x + residual))
    note("residual", dtype, total, x + residual)
    note("norm", dtype, rms_norm(x, norm.weight, norm.eps)[0], norm(x))
    gate_up = torch.randn(5, 2 * 1100).to(dtype)  # wider than one program's block
    gate, up = gate_up.chunk(2, dim=-1)
    note("silu", dtype, silu_mul(gate_up), F.silu(gate) * up)
    for heads, kv_heads, d in [(4, 2, 16), (6, 2, 24), (3, 3, 32), (16, 8, 128)]:
        tokens, group = 9, heads // kv_heads
        qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d).to(dtype)
        angles = torch.randn(tokens, d // 2)
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        caches = [torch.zeros(8, 4, kv_heads, d, dtype=dtype) for _ in range(4)]
        slots = torch.randperm(32)[:tokens]
        q = rotary_and_cache(qkv, cos, sin, caches[0], caches[1], slots, heads)
        packed = qkv.view(tokens, kv_heads, group + 2, d)
        plain_q = apply_rotary(packed[:, :, :group].reshape(tokens, heads, d), cos, sin)
        write_kv(caches[2], caches[3], apply_rotary(packed[:, :, group], cos, sin), packed[:, :, group + 1], slots)
        note("rotary q", dtype, q, plain_q)
        note("rotary k cache", dtype, caches[0], caches[2])
        note("v cache", dtype, caches[1], caches[3])
print(json.dumps(worst))
"""

ENGINE_FAST_VS_PLAIN = """
import json, sys
from monovl.engine.llm_engine import EngineConfig, LLMEngine
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.checkpoint import load_checkpoint
from tests.conftest import png_bytes
from tests.engine_helpers import greedy_tokens

result = {}
for fast in ("none", "norm,rotary,silu,experts"):
    loaded = load_checkpoint(sys.argv[1], "float32", "cpu", fast)
    pre = loaded.preprocessor
    image = pre.load_image(png_bytes(700, 300, seed=5), max_tiles=1)
    prompts = [
        pre.process([ChatMessage.text("user", "Tell me a story.")], []),
        pre.process([ChatMessage("user", (ImagePart(0), TextPart("What is it?")))], [image]),
    ]
    config = EngineConfig(num_kv_blocks=128, attention_backend="triton", max_num_batched_tokens=64)
    result[fast] = greedy_tokens(LLMEngine(loaded.model, loaded.tokens, config), prompts, max_tokens=6)
print(json.dumps(result))
"""


def test_fused_kernels_equal_the_plain_path():
    pytest.importorskip("triton")
    worst = json.loads(run_interpreted(KERNELS_VS_PLAIN))
    for key, diff in worst.items():
        assert diff <= (2e-6 if key.endswith("float32") else 0.07), (key, diff)
    assert worst["v cache/float32"] == 0 and worst["rotary q/float32"] == 0  # copies and mirrored rounding


def test_engine_with_every_fast_kernel_gives_the_plain_tokens(tiny_dir):
    # Chunks of 64 tokens mix the image's rows with text rows, so the grouped GEMM sees both experts.
    pytest.importorskip("triton")
    result = json.loads(run_interpreted(ENGINE_FAST_VS_PLAIN, str(tiny_dir)))
    assert result["norm,rotary,silu,experts"] == result["none"]
    assert all(len(t) == 6 for t in result["none"].values())


@pytest.mark.skipif(not grouped_mm_works(torch.device("cpu"), torch.float32), reason="no grouped GEMM on CPU")
def test_grouped_experts_equal_the_routed_experts_and_keep_the_checkpoint_names():
    layer = InternLM2DecoderLayer(config(4, 2))
    randomize(layer, seed=3)
    state = {name: t.clone() for name, t in layer.state_dict().items()}
    x = torch.randn(10, 32, generator=torch.Generator().manual_seed(2))
    masks = [torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool), torch.ones(10, dtype=torch.bool)]
    plain = [layer.routed_ffn(x, ExpertRows.of(m)) for m in [*masks, torch.zeros(10, dtype=torch.bool)]]
    with torch.device("meta"):
        packed_layer = InternLM2DecoderLayer(config(4, 2), packed_experts=True)
    assign_weights(packed_layer, {name: t.clone() for name, t in state.items()})
    grouped = FastPath(experts=True)
    packed = [
        packed_layer.routed_ffn(x, ExpertRows.of(m), grouped) for m in [*masks, torch.zeros(10, dtype=torch.bool)]
    ]
    for ours, theirs in zip(packed, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    after = packed_layer.state_dict()  # the checkpoint's names and values, not the packed tensors
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    inter = packed_layer.feed_forward.w1.weight.shape[0]
    assert packed_layer.feed_forward_ve.w3.weight.data_ptr() == packed_layer.w13[1, inter:].data_ptr()  # views


needs_onednn = pytest.mark.skipif(
    not onednn_linear_works(torch.device("cpu"), torch.float32), reason="this torch has no oneDNN linear"
)


def onednn_param(dtype: torch.dtype):
    # bfloat16 needs AVX-512 (or AVX-NE-CONVERT) on the CPU; the fast path probes it the same way
    works = onednn_linear_works(torch.device("cpu"), dtype)
    return pytest.param(dtype, marks=pytest.mark.skipif(not works, reason=f"no oneDNN linear for {dtype} here"))


@pytest.mark.parametrize("dtype", [onednn_param(torch.float32), onednn_param(torch.bfloat16)])
def test_onednn_linears_equal_the_plain_layers(dtype):
    layer = InternLM2DecoderLayer(config(4, 2))
    randomize(layer, seed=4)
    layer = layer.to(dtype)
    x = torch.randn(10, 32, generator=torch.Generator().manual_seed(5)).to(dtype)
    rows = ExpertRows.of(torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool))
    with torch.inference_mode():
        plain = layer.routed_ffn(x, rows), layer.attention.wqkv(x)
        reorder_linears(layer)
        ours = layer.routed_ffn(x, rows), layer.attention.wqkv(x)
    assert isinstance(layer.feed_forward_ve.w2, OneDNNLinear) and isinstance(layer.attention.wo, OneDNNLinear)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


@needs_onednn
def test_engine_on_onednn_linears_gives_the_plain_tokens(tiny_dir):
    from monovl.checkpoint import load_checkpoint
    from monovl.engine.llm_engine import EngineConfig, LLMEngine
    from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
    from tests.conftest import png_bytes
    from tests.engine_helpers import greedy_tokens

    tokens = {}
    for fast in ("none", "onednn"):
        loaded = load_checkpoint(str(tiny_dir), "float32", "cpu", fast)
        pre = loaded.preprocessor
        image = pre.load_image(png_bytes(700, 300, seed=5), max_tiles=2)
        prompts = [
            pre.process([ChatMessage.text("user", "Tell me a story.")], []),
            pre.process([ChatMessage("user", (ImagePart(0), TextPart("What is it?")))], [image]),
        ]
        engine = LLMEngine(loaded.model, loaded.tokens, EngineConfig(num_kv_blocks=128))
        assert loaded.model.fast.onednn == (fast == "onednn")
        tokens[fast] = greedy_tokens(engine, prompts, max_tokens=8)
    assert tokens["onednn"] == tokens["none"]
    assert all(len(t) == 8 for t in tokens["none"].values())


def test_parse():
    cpu = torch.device("cpu")
    assert FastPath.parse("none", cpu, torch.float32) == FastPath()
    assert not FastPath.parse("auto", cpu, torch.float32).norm  # the Triton kernels are for CUDA
    works = onednn_linear_works(cpu, torch.float32)
    assert FastPath.parse("auto", cpu, torch.float32) == FastPath(onednn=works)
    with pytest.raises(ValueError, match="unknown"):
        FastPath.parse("norm,warp", cpu, torch.float32)


def test_triton_kernels_are_refused_where_they_cannot_run(monkeypatch):
    # On the CPU a compiled Triton kernel has no driver: asked for there, it must fail at start,
    # not on every request. The interpreter (the tests' way to run them) is the exception.
    pytest.importorskip("triton")
    from monovl.model.paged_attention import pick_decode_kernel

    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        FastPath.parse("norm", cpu, torch.float32)
    with pytest.raises(ValueError, match="CUDA"):
        pick_decode_kernel("triton", cpu)
    assert pick_decode_kernel("auto", cpu) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert FastPath.parse("norm,rotary", cpu, torch.float32) == FastPath(norm=True, rotary=True)
    assert pick_decode_kernel("triton", cpu) is not None
