"""The routes vLLM users reach for beside chat: text completions, tokenize and detokenize, one model's card."""

import httpx
import openai
import pytest

from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from monovl.preprocessing.processor import Preprocessor
from tests.conftest import png_bytes
from tests.server_helpers import data_url


def post(mono_server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{mono_server.url}{path}", json=body, timeout=60)


def test_tokenize_and_detokenize_round_trip_a_text(mono_server, preprocessor):
    text = "Hello <|im_start|> world, 图片中有一只猫 ✓"
    got = post(mono_server, "/tokenize", {"prompt": text, "return_token_strs": True}).json()
    ids = preprocessor.tokenizer.encode(text)
    assert got["tokens"] == ids and got["count"] == len(ids) and got["max_model_len"] == 65536
    assert got["token_strs"] == [preprocessor.tokenizer.id_to_piece(i) for i in ids]
    back = post(mono_server, "/detokenize", {"tokens": got["tokens"]}).json()
    assert back["prompt"] == "<s>" + text  # special tokens kept: the ids come back as the text
    assert post(mono_server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()["tokens"] == ids[1:]


def test_tokenize_a_chat_gives_the_ids_a_chat_runs_images_included(mono_server, tiny_dir, tiny_model):
    image = png_bytes(900, 400, seed=2)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(image)}},
                {"type": "text", "text": "What?"},
            ],
        }
    ]
    got = post(mono_server, "/tokenize", {"messages": messages}).json()
    pre = Preprocessor(tiny_dir, tiny_model.config)
    expected = pre.process([ChatMessage("user", (ImagePart(0), TextPart("What?")))], [pre.load_image(image)])
    assert got["tokens"] == expected.token_ids
    without = post(mono_server, "/tokenize", {"messages": messages, "add_generation_prompt": False}).json()
    assert got["tokens"][: without["count"]] == without["tokens"] and without["count"] < got["count"]


def test_tokenize_and_detokenize_refuse_what_they_cannot_do(mono_server):
    assert post(mono_server, "/tokenize", {}).status_code == 400
    assert (
        post(mono_server, "/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}).status_code
        == 400
    )
    response = post(mono_server, "/detokenize", {"tokens": [5, 10**12]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tokens"
    assert post(mono_server, "/tokenize", {"prompt": "a", "model": "other"}).status_code == 404


def test_one_models_card(mono_server):
    card = httpx.get(f"{mono_server.url}/v1/models/mono").json()
    assert card["id"] == "mono" and card["object"] == "model" and card["max_model_len"] == 65536
    missing = httpx.get(f"{mono_server.url}/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_text_completion_is_the_raw_prompt_continued(mono_client, preprocessor):
    answer = mono_client.completions.create(model="mono", prompt="The cat", max_tokens=8, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "text_completion" and choice.finish_reason == "length"
    assert answer.usage.prompt_tokens == len(preprocessor.tokenizer.encode("The cat"))
    assert answer.usage.completion_tokens == 8
    echoed = mono_client.completions.create(model="mono", prompt="The cat", max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == "The cat" + choice.text
    default = mono_client.completions.create(model="mono", prompt="The cat", temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default for text completions
    ids = preprocessor.tokenizer.encode("The cat")
    by_ids = mono_client.completions.create(model="mono", prompt=ids, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == choice.text


def test_text_completion_batches_n_logprobs_and_streams(mono_client):
    answer = mono_client.completions.create(
        model="mono", prompt=["One", "Two words"], n=2, max_tokens=5, temperature=1.0, seed=4, logprobs=3
    )
    assert sorted(c.index for c in answer.choices) == [0, 1, 2, 3]
    for choice in answer.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
        assert all(len(top) <= 3 for top in lp.top_logprobs)
        assert all(v <= 0 for v in lp.token_logprobs) and lp.text_offset == sorted(lp.text_offset)
    streamed = {i: "" for i in range(4)}
    chunks = mono_client.completions.create(
        model="mono",
        prompt=["One", "Two words"],
        n=2,
        max_tokens=5,
        temperature=1.0,
        seed=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    for chunk in chunks:
        for c in chunk.choices:
            streamed[c.index] += c.text
        usage = chunk.usage or usage
    assert streamed == {c.index: c.text for c in answer.choices}
    assert usage.completion_tokens == answer.usage.completion_tokens


def test_echo_with_logprobs_gives_the_prompts_logprobs(mono_client, preprocessor):
    """Their values are checked against float64 math in test_model_math; here, their shape on the wire."""
    ids = preprocessor.tokenizer.encode("The cat sat on the mat")
    answers = []
    for _ in range(2):  # the second run's prompt is in the prefix cache, and its logprobs are computed all the same
        answer = mono_client.completions.create(
            model="mono", prompt=ids, max_tokens=2, temperature=0, logprobs=2, echo=True, n=2
        )
        for choice in answer.choices:
            lp = choice.logprobs
            assert len(lp.tokens) == len(ids) + 2 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
            assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
            assert all(len(top) == 2 for top in lp.top_logprobs[1:])
            assert choice.text.startswith("The cat sat on the mat")
            assert lp.text_offset[1] == 0 and lp.text_offset == sorted(lp.text_offset)  # <s> has no text
        answers.append(answer.choices[0].logprobs.token_logprobs)
    assert answers[0] == answers[1]
    streamed = mono_client.completions.create(
        model="mono", prompt=ids, max_tokens=2, temperature=0, logprobs=2, echo=True, stream=True
    )
    first = next(iter(streamed)).choices[0]
    assert first.text == "The cat sat on the mat" and first.logprobs.token_logprobs == answers[0][: len(ids)]


def test_text_completion_takes_structured_outputs_and_refuses_what_it_cannot_do(mono_client):
    answer = mono_client.completions.create(
        model="mono", prompt="Pick", max_tokens=20, extra_body={"guided_choice": ["red", "blue"]}
    )
    assert answer.choices[0].text in ("red", "blue")
    for kwargs, param in [
        ({"suffix": "x"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": "<IMG_CONTEXT>"}, "prompt"),
        ({"max_tokens": 10**6}, "max_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            mono_client.completions.create(**{"model": "mono", "prompt": "x", **kwargs})
        assert refused.value.body["param"] == param
