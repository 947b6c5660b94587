"""The decoder's layers against independent float64 math (tests/naive_math.py)."""

import pytest
import torch

from monovl.model.config import LLMConfig
from monovl.model.forward_batch import ExpertRows, ForwardBatch, KVCache
from monovl.model.internlm2 import InternLM2Attention, InternLM2DecoderLayer
from monovl.model.paged_attention import blocked_causal_gqa, causal_gqa, one_query_gqa
from monovl.model.rope import RotaryEmbedding
from tests.naive_math import causal_attention, rope_angles, rotate_pairs, silu_ffn, split_wqkv


def config(heads: int, kv_heads: int, head_dim: int = 8) -> LLMConfig:
    return LLMConfig(
        vocab_size=32,
        hidden_size=heads * head_dim,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=128,
        bias=False,
    )


def randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def two_request_steps(cfg: LLMConfig, block_size: int = 4):
    """Request A: 6-token prefill then a 3-token chunk; request B: 5-token prefill then one decode.

    The second step mixes a prefill chunk (A) and a decode (B) in one flat batch, with the
    requests' blocks interleaved in the pool.
    """
    tables = torch.tensor([[0, 2, 4], [1, 3, 5]])

    def slots(table, positions):
        return [int(table[p // block_size]) * block_size + p % block_size for p in positions]

    def step(spans):
        positions, slot_list, qlens, slens = [], [], [], []
        for b, (start, end) in enumerate(spans):
            positions += list(range(start, end))
            slot_list += slots(tables[b], range(start, end))
            qlens.append(end - start)
            slens.append(end)
        t = len(positions)
        return ForwardBatch(
            input_ids=torch.zeros(t, dtype=torch.long),
            positions=torch.tensor(positions),
            expert_rows=None,
            visual_embeds=None,
            slot_mapping=torch.tensor(slot_list),
            block_tables=tables,
            query_lens=qlens,
            seq_lens=slens,
        )

    return step([(0, 6), (0, 5)]), step([(6, 9), (5, 6)])


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (8, 2), (6, 2), (3, 1)])
def test_paged_attention_equals_full_causal_attention(heads, kv_heads):
    cfg = config(heads, kv_heads)
    attention = InternLM2Attention(cfg)
    randomize(attention, seed=heads * 10 + kv_heads)
    rotary = RotaryEmbedding(cfg)
    cache = KVCache.allocate(cfg, num_blocks=6, block_size=4, dtype=torch.float32)
    x = {
        name: torch.randn(n, cfg.hidden_size, generator=torch.Generator().manual_seed(n))
        for name, n in (("a", 9), ("b", 6))
    }
    first, second = two_request_steps(cfg)
    outs = []
    for batch, rows in ((first, {"a": slice(0, 6), "b": slice(0, 5)}), (second, {"a": slice(6, 9), "b": slice(5, 6)})):
        inputs = torch.cat([x["a"][rows["a"]], x["b"][rows["b"]]])
        cos, sin = rotary.cos_sin(batch.positions)
        outs.append(attention(inputs, cos, sin, cache.key[0], cache.value[0], batch))
    ours_a = torch.cat([outs[0][:6], outs[1][:3]])
    ours_b = torch.cat([outs[0][6:], outs[1][3:]])

    w_qkv, w_o = attention.wqkv.weight.double(), attention.wo.weight.double()
    d = cfg.head_dim
    for seq, ours in ((x["a"], ours_a), (x["b"], ours_b)):
        q, k, v = split_wqkv(seq.double() @ w_qkv.T, heads, kv_heads, d)
        angles = rope_angles(list(range(seq.shape[0])), d, cfg.rope_theta)
        expected = causal_attention(rotate_pairs(q, angles), rotate_pairs(k, angles), v).reshape(seq.shape[0], -1)
        torch.testing.assert_close(ours.double(), expected @ w_o.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2), (6, 2), (3, 1)])
def test_one_decode_query_equals_the_last_row_of_causal_attention(heads, kv_heads):
    # The two-GEMM path that serves bfloat16 decode queries on the CPU, in float32 and through
    # causal_gqa in bfloat16, against float64 math over the whole sequence.
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    length, d = 37, 16
    q, k, v = (torch.randn(length, n, d, generator=g, dtype=torch.float64) for n in (heads, kv_heads, kv_heads))
    expected = causal_attention(q, k, v)[-1:]
    last = q[-1:]
    torch.testing.assert_close(
        one_query_gqa(last.float(), k.float(), v.float()).double(), expected, rtol=1e-5, atol=1e-5
    )
    ours = causal_gqa(last.bfloat16(), k.bfloat16(), v.bfloat16())
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.double(), expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (8, 2), (6, 2), (3, 1)])
@pytest.mark.parametrize(("n", "length"), [(37, 37), (70, 100), (16, 2100), (1, 9)])
def test_blocked_prefill_equals_causal_attention(heads, kv_heads, n, length):
    # The path of bfloat16 prefill chunks on the CPU, in float32 (tight) and through causal_gqa in
    # bfloat16, against float64 over the whole sequence: whole prompts (n == length), chunks after
    # context, blocks of 32 and of 16 rows (2,100 tokens of context) and partial last blocks.
    g = torch.Generator().manual_seed(heads * 100 + n)
    d = 16
    q, k, v = (torch.randn(length, h, d, generator=g, dtype=torch.float64) for h in (heads, kv_heads, kv_heads))
    expected = causal_attention(q, k, v)[-n:]
    chunk = q[-n:]
    ours = blocked_causal_gqa(chunk.float(), k.float(), v.float())
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)
    in_bf16 = causal_gqa(chunk.bfloat16(), k.bfloat16(), v.bfloat16())
    assert in_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(in_bf16.double(), expected, rtol=3e-2, atol=3e-2)


def test_routed_ffn_equals_masked_blend_and_runs_each_expert_only_on_its_rows():
    cfg = config(4, 2)
    layer = InternLM2DecoderLayer(cfg)
    randomize(layer, seed=7)
    x = torch.randn(10, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    seen = {}
    layer.feed_forward.register_forward_hook(lambda m, i, o: seen.__setitem__("text", i[0].shape[0]))
    layer.feed_forward_ve.register_forward_hook(lambda m, i, o: seen.__setitem__("visual", i[0].shape[0]))
    out = layer.routed_ffn(x, ExpertRows.of(mask))
    assert seen == {"text": 5, "visual": 5}

    sd = {f"ffn.{k}": v for k, v in layer.feed_forward.state_dict().items()}
    sd |= {f"ve.{k}": v for k, v in layer.feed_forward_ve.state_dict().items()}
    m = mask.double()[:, None]
    blend = silu_ffn(x.double(), sd, "ffn") * (1 - m) + silu_ffn(x.double(), sd, "ve") * m
    torch.testing.assert_close(out.double(), blend, rtol=1e-5, atol=1e-5)


def test_all_text_batch_skips_the_visual_expert():
    layer = InternLM2DecoderLayer(config(4, 2))
    calls = []
    layer.feed_forward_ve.register_forward_hook(lambda *a: calls.append(1))
    layer.routed_ffn(torch.randn(3, 32), ExpertRows.of(torch.zeros(3, dtype=torch.bool)))
    assert not calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lengths", [(9, 8, 10, 10), (9, 2, 10, 10)])
def test_decode_rows_attended_together_equal_float64_attention(dtype, lengths):
    # Three one-token requests beside a 3-token chunk (the last length): similar contexts attend in one
    # padded call, a short one among long ones makes the padding too costly and each attends alone.
    import numpy as np

    from monovl.engine.model_runner import ModelRunner
    from monovl.engine.step_layout import StepLayout
    from monovl.engine.vision_cache import VisionCache
    from monovl.model.paged_attention import padded_decode, paged_attention
    from tests.naive_math import causal_attention as full

    heads, kv_heads, d, block_size = 4, 2, 8, 4
    g = torch.Generator().manual_seed(sum(lengths))
    cache_k = torch.randn(16, block_size, kv_heads, d, generator=g).to(dtype)
    cache_v = torch.randn(16, block_size, kv_heads, d, generator=g).to(dtype)
    tables = torch.tensor([[3, 7, 1], [9, 2, 0], [4, 12, 5], [8, 6, 11]])
    query_lens = [1, 1, 1, 3]
    # The runner's choice of decode rows on the torch path (no decode kernel); it reads the lengths only.
    runner = ModelRunner(None, KVCache(cache_k[None], cache_v[None]), 0, VisionCache(0))
    zeros = [0] * 6
    layout = StepLayout(zeros, zeros, zeros, [False] * 6, zeros, query_lens, list(lengths), [], np.zeros((4, 3)))
    decode = runner.decode_rows(layout, tables)
    together = decode is not None and decode.kernel is padded_decode and decode.requests == [0, 1, 2]
    assert together == (min(lengths) > 2)
    batch = ForwardBatch(
        input_ids=torch.zeros(6, dtype=torch.long),
        positions=torch.zeros(6, dtype=torch.long),
        expert_rows=None,
        visual_embeds=None,
        slot_mapping=torch.zeros(6, dtype=torch.long),
        block_tables=tables,
        query_lens=query_lens,
        seq_lens=list(lengths),
        decode=decode,
    )
    q = torch.randn(6, heads, d, generator=g).to(dtype)
    ours = paged_attention(q, cache_k, cache_v, batch)
    row = 0
    for b, (n, length) in enumerate(zip(query_lens, lengths, strict=True)):
        keys = cache_k[tables[b]].flatten(0, 1)[:length].double()
        values = cache_v[tables[b]].flatten(0, 1)[:length].double()
        queries = torch.cat([torch.zeros(length - n, heads, d, dtype=torch.float64), q[row : row + n].double()])
        expected = full(queries, keys, values)[-n:]
        tolerance = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(ours[row : row + n].double(), expected, rtol=tolerance, atol=tolerance)
        row += n
