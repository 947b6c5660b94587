"""CUDA paths: run where a GPU is present (scripts/gpu_check.sh on a lent device); skipped elsewhere."""

import pytest
import torch

from engine.llm_engine import EngineConfig, LLMEngine
from engine.sampling_params import SamplingParams
from model.loader import load_model
from preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from preprocessing.processor import Preprocessor
from server.model_loading import LoadedCheckpoint
from tests.conftest import png_bytes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(16, 8, 128), (4, 2, 16), (8, 1, 64)])
def test_triton_decode_equals_the_torch_path(dtype, heads, kv_heads, d):
    from model.paged_attention import causal_gqa, gather_context
    from model.triton_decode import paged_decode

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


def greedy_tokens(directory, device, dtype, backend, cuda_graphs=False) -> dict[str, list[int]]:
    model = load_model(directory, dtype, device)
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
