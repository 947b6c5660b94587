"""`from monovl import LLM`: the offline API as vLLM users write it, answering as the server does."""

import base64
import io
import json

import httpx
import jsonschema
import pytest
from PIL import Image

from benchmarks.server_process import ServerProcess
from monovl import LLM, RequestOutput, SamplingParams, StructuredOutput
from tests.conftest import png_bytes

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_dir):
    llm = LLM(str(tiny_dir), max_num_seqs=8)
    yield llm
    llm.close()


def picture() -> Image.Image:
    return Image.open(io.BytesIO(png_bytes(700, 300, seed=6)))


def asking(image_part: dict) -> list[dict]:
    return [{"role": "user", "content": [image_part, {"type": "text", "text": "What?"}]}]


def conversations(path) -> list[list[dict]]:
    data = "data:image/png;base64," + base64.b64encode(png_bytes(700, 300, seed=6)).decode()
    return [
        [{"role": "user", "content": "Tell me a story."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        asking({"type": "image_pil", "image_pil": picture()}),
        asking({"type": "image_url", "image_url": {"url": data}}),
        asking({"type": "image_url", "image_url": {"url": str(path)}}),
    ]


def test_a_batch_of_conversations_equals_each_alone_and_images_agree_however_given(llm, tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(png_bytes(700, 300, seed=6))
    chats = conversations(path)
    together = llm.chat(chats, GREEDY, use_tqdm=False)
    alone = [llm.chat(chat, GREEDY, use_tqdm=False)[0] for chat in chats]
    assert all(isinstance(result, RequestOutput) and result.finished for result in together)
    assert [r.outputs[0].token_ids for r in together] == [r.outputs[0].token_ids for r in alone]
    assert all(len(r.outputs[0].token_ids) == 10 and r.outputs[0].finish_reason == "length" for r in together)
    # the same picture as a PIL image, a data: URL and a path: the same prompt and answer
    assert together[2].prompt_token_ids == together[3].prompt_token_ids == together[4].prompt_token_ids
    assert together[2].outputs[0].text == together[3].outputs[0].text == together[4].outputs[0].text
    assert together[4].num_cached_tokens > 0  # its image and prompt were cached by the ones before


def test_greedy_answers_equal_the_servers(llm, tiny_dir, tmp_path):
    chats = [conversations(tmp_path)[k] for k in (0, 1, 3)]  # text, a system turn, an image as a data: URL
    results = llm.chat(chats, GREEDY, use_tqdm=False)
    server = ServerProcess(tiny_dir)
    try:
        for chat, result in zip(chats, results, strict=True):
            body = {"messages": chat, "temperature": 0, "max_tokens": 10, "ignore_eos": True}
            answer = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
            assert answer["choices"][0]["message"]["content"] == result.outputs[0].text
            assert answer["usage"]["prompt_tokens"] == len(result.prompt_token_ids)
    finally:
        server.stop()


def test_generate_takes_prompts_and_images_with_placeholders(llm):
    results = llm.generate(
        ["Hello", {"prompt": "<image>\nDescribe it.", "multi_modal_data": {"image": picture()}}],
        SamplingParams(temperature=0, max_tokens=4),
        use_tqdm=False,
    )
    assert results[0].prompt == "Hello" and len(results[0].prompt_token_ids) < 5
    pre = llm.preprocessor
    image_tokens = pre.config.num_image_token * pre.load_image(png_bytes(700, 300, seed=6)).num_tiles
    # <s>, <img>, the image's tokens, </img>, then the text (its own <s> left out)
    assert (
        len(results[1].prompt_token_ids) == 1 + 1 + image_tokens + 1 + len(pre.tokenizer.encode("\nDescribe it.")) - 1
    )
    with pytest.raises(ValueError, match="placeholders"):
        llm.generate({"prompt": "no placeholder", "multi_modal_data": {"image": picture()}}, use_tqdm=False)


def test_sampling_params_as_the_server_takes_them(llm):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    params = SamplingParams(
        max_tokens=60, temperature=1.0, seed=3, structured_output=StructuredOutput.json_schema(schema)
    )
    (result,) = llm.chat([{"role": "user", "content": "JSON?"}], params, use_tqdm=False)
    jsonschema.validate(json.loads(result.outputs[0].text), schema)
    (sampled,) = llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(n=3, max_tokens=5, seed=1, logprobs=2))
    assert [c.index for c in sampled.outputs] == [0, 1, 2]
    completion = sampled.outputs[0]
    assert len(completion.logprobs) == len(completion.token_ids) == 5
    for token, found in zip(completion.token_ids, completion.logprobs, strict=True):
        assert token in found and sorted(lp.rank for lp in found.values() if lp.rank)[:2] == [1, 2]
    assert completion.cumulative_logprob == pytest.approx(
        sum(f[t].logprob for t, f in zip(completion.token_ids, completion.logprobs, strict=True))
    )


def test_settings_are_named_and_checked_as_serves_flags(tiny_dir):
    with pytest.raises(ValueError, match="max_num_seqs must be at least 1"):
        LLM(str(tiny_dir), max_num_seqs=0)
    with pytest.raises(TypeError, match="unknown setting 'port'"):
        LLM(str(tiny_dir), port=8000)
    with pytest.raises(ValueError, match="--kv-cache-memory and --kv-cache-fraction"):
        LLM(str(tiny_dir), kv_cache_memory=1, kv_cache_fraction=0.5)
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        LLM(str(tiny_dir), attention_backend="cudnn")
