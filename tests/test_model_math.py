"""The whole model, loaded from a checkpoint, against float64 math written from the spec."""

import json

import pytest
import torch
from safetensors.torch import load_file

from monovl.engine.llm_engine import EngineConfig, LLMEngine, TokenizerInfo
from monovl.engine.sampling_params import SamplingParams
from monovl.model.forward_batch import ExpertRows, ForwardBatch, KVCache
from monovl.model.loader import load_model, weight_files
from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.processor import Preprocessor
from tests.conftest import png_bytes
from tests.naive_math import embed_images, language_model_logits


def visual_embeddings(model, inputs):
    return torch.cat([model.embed_images(im.pixel_values()).flatten(0, 1) for im in inputs.images])


def state_dict(directory):
    sd = {}
    for path in weight_files(directory):
        sd.update(load_file(str(path)))
    return sd


def prefill_logits(model, inputs, img_context_id):
    n = inputs.num_tokens
    ids = torch.tensor(inputs.token_ids)
    positions = torch.arange(n)
    cache = KVCache.allocate(model.config.llm, -(-n // 16), 16, torch.float32)
    batch = ForwardBatch(
        input_ids=ids,
        positions=positions,
        expert_rows=ExpertRows.of(ids == img_context_id),
        visual_embeds=visual_embeddings(model, inputs),
        slot_mapping=positions,
        block_tables=torch.arange(cache.num_blocks)[None],
        query_lens=[n],
        seq_lens=[n],
        rope_lens=torch.full_like(positions, n),
    )
    return model.compute_logits(model(batch, cache))


def image_prompt(pre: Preprocessor, width=500, height=300):
    image = pre.load_image(png_bytes(width, height, seed=3), max_tiles=2)
    message = ChatMessage("user", (ImagePart(0), TextPart("What is this?")))
    return pre.process([message], [image])


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"heads": 8, "kv_heads": 2, "hidden": 64},
        {"heads": 3, "kv_heads": 3, "hidden": 48, "intermediate": 40, "vit_hidden": 12},
        {"max_position_embeddings": 128},  # the prompt exceeds it: dynamic NTK rescales the base
        {"rope_scaling": "linear:3.0"},
    ],
)
def test_prefill_logits_match_float64_math(make_checkpoint, shape):
    directory = make_checkpoint(**shape)
    model = load_model(directory, torch.float32, torch.device("cpu"))
    pre = Preprocessor(directory, model.config)
    inputs = image_prompt(pre)
    assert inputs.images[0].num_tiles == 3  # 2x1 grid + thumbnail
    sd = state_dict(directory)
    llm = json.loads((directory / "config.json").read_text())["llm_config"]
    visual = embed_images(sd, inputs.images[0].pixel_values(), patch=14).reshape(-1, llm["hidden_size"])
    torch.testing.assert_close(visual_embeddings(model, inputs).double(), visual, rtol=1e-4, atol=1e-4)
    mask = [t == pre.img_context_id for t in inputs.token_ids]
    expected = language_model_logits(sd, llm, inputs.token_ids, mask, visual)
    ours = prefill_logits(model, inputs, pre.img_context_id).double()
    assert (ours - expected).abs().max() < 2e-3 * expected.abs().max()
    torch.testing.assert_close(torch.log_softmax(ours, -1), torch.log_softmax(expected, -1), rtol=0, atol=2e-3)


def test_chunked_prefill_and_cached_decoding_match_full_recompute(tiny_dir, tiny_model, preprocessor):
    inputs = image_prompt(preprocessor)
    tokens = TokenizerInfo(preprocessor.tokenizer, (), preprocessor.img_context_id)
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=64, max_num_batched_tokens=128))
    engine.add_request("r", inputs, SamplingParams(temperature=0, max_tokens=8, logprobs=5))
    token_ids, logprobs = [], []
    while engine.has_unfinished():
        for output in engine.step():
            token_ids += output.new_token_ids
            logprobs += output.new_logprobs
    assert len(token_ids) == 8 and engine.num_free_blocks == 64
    sd = state_dict(tiny_dir)
    llm = json.loads((tiny_dir / "config.json").read_text())["llm_config"]
    ids = inputs.token_ids + token_ids[:-1]
    mask = [t == preprocessor.img_context_id for t in ids]
    visual = visual_embeddings(tiny_model, inputs)
    logits = language_model_logits(sd, llm, ids, mask, visual)[inputs.num_tokens - 1 :]
    expected = torch.log_softmax(logits, -1)
    for step, lp in enumerate(logprobs):
        assert lp.token_id == int(torch.argmax(expected[step]))
        assert abs(lp.logprob - float(expected[step, lp.token_id])) < 1e-3
        assert [i for i, _ in lp.top_logprobs] == torch.topk(expected[step], 5).indices.tolist()


def test_prompt_logprobs_over_chunks_match_float64_math(tiny_dir, tiny_model, preprocessor):
    inputs = image_prompt(preprocessor)
    tokens = TokenizerInfo(preprocessor.tokenizer, (), preprocessor.img_context_id)
    engine = LLMEngine(tiny_model, tokens, EngineConfig(num_kv_blocks=128, max_num_batched_tokens=128))
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=3, n=2)
    for request_id in ("first", "cached"):  # the second finds the prompt in the prefix cache, and computes it
        engine.add_request(request_id, inputs, params)
        found = []
        while engine.has_unfinished():
            found += [o.prompt_logprobs for o in engine.step() if o.prompt_logprobs is not None]
        [prompt_logprobs] = found  # completion 0's, once
        assert len(prompt_logprobs) == inputs.num_tokens and prompt_logprobs[0] is None
        sd = state_dict(tiny_dir)
        llm = json.loads((tiny_dir / "config.json").read_text())["llm_config"]
        mask = [t == preprocessor.img_context_id for t in inputs.token_ids]
        logits = language_model_logits(sd, llm, inputs.token_ids, mask, visual_embeddings(tiny_model, inputs))
        expected = torch.log_softmax(logits, -1)
        for position, lp in enumerate(prompt_logprobs[1:], start=1):
            assert lp.token_id == inputs.token_ids[position]
            assert abs(lp.logprob - expected[position - 1, lp.token_id].item()) < 2e-3
            top = expected[position - 1].topk(3)
            assert [i for i, _ in lp.top_logprobs] == top.indices.tolist() or (
                abs(lp.top_logprobs[-1][1] - top.values[-1].item()) < 2e-3  # a tie in the last place
            )
    assert engine.num_free_blocks == engine.block_pool.num_blocks
