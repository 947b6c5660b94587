"""The batched engine: same tokens under concurrency as alone, preemption, prefix cache, faults."""

import dataclasses

import pytest
import torch

from monovl.engine.llm_engine import EngineConfig, LLMEngine, RequestError
from monovl.engine.sampling_params import SamplingParams
from monovl.preprocessing.chat_template import ChatMessage
from tests.conftest import generate_cli
from tests.engine_helpers import mixed_workload, run, solo_results


@pytest.fixture(scope="module")
def tokens(preprocessor):
    from monovl.engine.llm_engine import TokenizerInfo

    return TokenizerInfo(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids), preprocessor.img_context_id)


@pytest.fixture(scope="module")
def workload(preprocessor):
    return mixed_workload(preprocessor)


@pytest.fixture(scope="module")
def alone(tiny_model, tokens, workload):
    return solo_results(tiny_model, tokens, workload)


def staggered(workload):
    """Requests arrive over the first steps, several at a time."""
    arrivals = {}
    for k, item in enumerate(workload):
        arrivals.setdefault((k * 3) // 4, []).append(item)
    return arrivals


def assert_same_tokens(batched, alone):
    assert batched.keys() == alone.keys()
    for key in alone:
        assert batched[key].token_ids == alone[key].token_ids, key
        assert batched[key].text == alone[key].text, key
        assert batched[key].finish_reason == alone[key].finish_reason, key
        for a, b in zip(batched[key].logprobs, alone[key].logprobs, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-3


def test_batch_of_16_mixed_requests_equals_each_alone(tiny_model, tokens, workload, alone):
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=1024, max_num_batched_tokens=300))
    batched = run(engine, staggered(workload))
    assert_same_tokens(batched, alone)
    assert batched[("req-15", 0)].num_cached_tokens > 0  # same prompt as req-0
    assert all(len(c.token_ids) >= 1 for c in batched.values())


def test_a_small_pool_preempts_and_still_gives_the_same_tokens(tiny_model, tokens, workload, alone):
    # Every prompt admitted at once and prefilled as fast as the budget allows: the pool runs short.
    config = EngineConfig(
        num_kv_blocks=180, max_num_batched_tokens=256, long_prefill_token_threshold=0, max_num_partial_prefills=16
    )
    engine = LLMEngine(tiny_model, tokens, config)
    batched = run(engine, staggered(workload))
    assert engine.scheduler.num_preemptions > 0
    assert_same_tokens(batched, alone)


def test_generate_cli_equals_the_engine_alone(tiny_dir, workload, alone):
    offline = generate_cli(tiny_dir, "Tell me a story about a cat.", workload[1][2].max_tokens)
    assert offline["token_ids"] == alone[("req-1", 0)].token_ids


def test_prefix_cache_hit_gives_the_same_tokens_as_a_miss(tiny_model, tokens, workload):
    _, prompt, params = workload[4]  # one image, 256 image tokens
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=256))
    miss = run(engine, {0: [("first", prompt, params)]})[("first", 0)]
    hit = run(engine, {0: [("second", prompt, params)]})[("second", 0)]
    assert miss.num_cached_tokens == 0 and hit.num_cached_tokens >= prompt.num_tokens - 16
    assert hit.token_ids == miss.token_ids


def test_different_images_never_share_cached_blocks(tiny_model, tokens, workload, alone):
    # requests 4 and 5: same text layout around different pictures
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=512))
    first = run(engine, {0: [workload[4]]})
    second = run(engine, {0: [workload[5]]})
    assert second[("req-5", 0)].num_cached_tokens < 64  # only the shared system-prompt blocks
    assert second[("req-5", 0)].token_ids == alone[("req-5", 0)].token_ids
    assert first[("req-4", 0)].token_ids == alone[("req-4", 0)].token_ids


def test_seeded_sampling_is_the_same_in_any_batch(tiny_model, tokens, workload):
    _, prompt, _ = workload[0]
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=12)
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=1024, max_num_batched_tokens=300))
    alone = run(engine, {0: [("seeded", prompt, params)]})[("seeded", 0)].token_ids
    others = [(rid, p, dataclasses.replace(sp, temperature=0.7, seed=None)) for rid, p, sp in workload[1:9]]
    crowd = run(engine, {0: others[:4], 1: [("seeded", prompt, params)], 2: others[4:]})
    assert crowd[("seeded", 0)].token_ids == alone
    different = run(engine, {0: [("other-seed", prompt, dataclasses.replace(params, seed=99))]})
    assert different[("other-seed", 0)].token_ids != alone


def test_n_completions_share_the_prompt_blocks(tiny_model, tokens, workload):
    _, prompt, _ = workload[5]
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=512))
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6)
    engine.add_request("n3", prompt, params)
    # The later two wait until the first has prefilled the prompt, and find it in the prefix cache.
    while engine.requests[("n3", 1)].block_table == []:
        engine.step()
    assert engine.requests[("n3", 1)].num_cached_tokens == prompt.num_tokens // 16 * 16
    shared = len(set(engine.requests[("n3", 0)].block_table) & set(engine.requests[("n3", 1)].block_table))
    assert shared == prompt.num_tokens // 16
    results = run(engine, {})
    assert sorted(k[1] for k in results) == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in results.values()}) > 1  # different seeds per completion


def test_abort_frees_blocks_at_once(tiny_model, tokens, workload):
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=512, max_num_batched_tokens=64))
    for request_id, prompt, params in workload[4:8]:
        engine.add_request(request_id, prompt, params)
    engine.step()
    engine.step()
    assert engine.num_free_blocks < 512
    for request_id, _, _ in workload[4:8]:
        engine.abort_request(request_id)
    assert engine.num_free_blocks == 512 and not engine.has_unfinished()


def test_an_exception_in_one_request_fails_only_that_request(tiny_model, tokens, workload, alone, monkeypatch):
    bad_image = workload[6][1].images[0]
    real_embed = tiny_model.embed_images

    def embed(pixel_values):
        if any(torch.equal(tile, bad_image.pixel_values()[0]) for tile in pixel_values):
            raise RuntimeError("injected fault")
        return real_embed(pixel_values)

    monkeypatch.setattr(tiny_model, "embed_images", embed)
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=1024, max_num_batched_tokens=2048))
    batched = run(engine, {0: workload[4:9]})
    assert batched[("req-6", 0)].finish_reason == "error" and "RuntimeError" in batched[("req-6", 0)].error
    for key in [("req-4", 0), ("req-5", 0), ("req-7", 0), ("req-8", 0)]:
        assert batched[key].token_ids == alone[key].token_ids
    assert bad_image.content_hash not in engine.runner.vision_cache.entries


def test_the_context_limits_prompt_and_max_tokens_as_vllm(tiny_model, tokens, preprocessor):
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=8, block_size=16))
    assert engine.max_model_len == 8 * 16  # the pool holds less than the config's context
    prompt = preprocessor.process([ChatMessage.text("user", "word " * 200)], [])
    with pytest.raises(RequestError, match="maximum context length is 128 tokens") as refused:
        engine.add_request("long", prompt, SamplingParams())
    assert refused.value.param == "messages"
    short = preprocessor.process([ChatMessage.text("user", "hi")], [])
    room = 128 - short.num_tokens
    with pytest.raises(RequestError, match=f"you requested {room + 1} output tokens") as refused:
        engine.add_request("over", short, SamplingParams(max_tokens=room + 1))
    assert refused.value.param == "max_tokens" and not engine.has_unfinished()
    # without max_tokens, the rest of the context
    results = run(engine, {0: [("rest", short, SamplingParams(temperature=0, max_tokens=None, ignore_eos=True))]})
    assert results[("rest", 0)].finish_reason == "length" and len(results[("rest", 0)].token_ids) == room
    exact = run(engine, {0: [("exact", short, SamplingParams(temperature=0, max_tokens=room, ignore_eos=True))]})
    assert exact[("exact", 0)].token_ids == results[("rest", 0)].token_ids


def test_max_model_len_defaults_to_the_configs_context(make_checkpoint, tokens):
    from monovl.model.loader import load_model

    for rope, context in (("none", 4096), ("dynamic:2.0", 8192), ("linear:4.0", 16384)):
        directory = make_checkpoint(max_position_embeddings=4096, rope_scaling=rope)
        model = load_model(directory, torch.float32, torch.device("cpu"))
        assert LLMEngine(model, tokens, EngineConfig(num_kv_blocks=2048)).max_model_len == context
        assert LLMEngine(model, tokens, EngineConfig(num_kv_blocks=2048, max_model_len=3000)).max_model_len == 3000
        assert LLMEngine(model, tokens, EngineConfig(num_kv_blocks=100)).max_model_len == 1600


def test_stop_token_ids_max_tokens_and_ignore_eos(tiny_model, tokens, workload, alone):
    _, prompt, _ = workload[1]
    reference = alone[("req-1", 0)].token_ids
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=256))
    stop_at = reference[2]
    stopped = run(engine, {0: [("s", prompt, SamplingParams(temperature=0, max_tokens=30, stop_token_ids=(stop_at,)))]})
    assert stopped[("s", 0)].token_ids == reference[: reference.index(stop_at) + 1]
    assert stopped[("s", 0)].finish_reason == "stop"
    capped = run(engine, {0: [("m", prompt, SamplingParams(temperature=0, max_tokens=2))]})
    assert capped[("m", 0)].token_ids == reference[:2] and capped[("m", 0)].finish_reason == "length"
