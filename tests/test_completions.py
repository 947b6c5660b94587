"""`/v1/completions` on the wire: every prompt form OpenAI's document allows, `max_tokens: 0`, and
`text_offset` where the choice's text has each token."""

import json

import httpx
import openai
import pytest

from monovl.preprocessing.tokenizer import Tokenizer

PROMPT = "héllo 日本 🙂 Hello<|im_end|> world"
SPECIALS = ("<s>", "</s>", "<unk>", "<|im_end|>", "<|im_start|>")


def complete(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json={"model": "mono", **body}, timeout=60)


def assert_each_token_where_the_text_has_it(text: str, tokens: list[str], offsets: list[int]) -> None:
    """The text from a token's offset to the next one's is the token's own: its string, without its
    leading space where it begins a decoded run; a byte piece's character at its last byte (U+FFFD for
    bytes that make none); a special token's string, or nothing where it is skipped."""
    assert offsets == sorted(offsets) and offsets[-1] <= len(text)
    for token, start, end in zip(tokens, offsets, [*offsets[1:], len(text)], strict=True):
        got = text[start:end]
        if token in SPECIALS:
            assert got in ("", token), (token, got)
        elif token.startswith("\\x"):  # a non-ASCII byte, written as sentencepiece's byte piece is
            assert got == "" or (not got.isascii() and len(got.lstrip("\ufffd")) <= 1), (token, got)
        else:
            assert got.lstrip("\ufffd") in (token, token.removeprefix(" ")), (token, got, start)


@pytest.mark.parametrize("as_ids", [False, True], ids=["text", "token-ids"])
def test_text_offset_is_where_the_text_has_each_token(mono_server, tiny_dir, as_ids):
    tokenizer = Tokenizer(tiny_dir)
    ids = tokenizer.encode(PROMPT)
    prompt = ids if as_ids else PROMPT
    body = {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 24, "temperature": 1.0, "seed": 3}
    answer = complete(mono_server, **body, ignore_eos=True).json()
    choice = answer["choices"][0]
    lp = choice["logprobs"]
    echoed = tokenizer.decode(ids) if as_ids else PROMPT
    assert choice["text"].startswith(echoed) and len(lp["tokens"]) == len(ids) + 24
    if not as_ids:  # where sentencepiece itself places each piece in the text sent
        assert lp["text_offset"][: len(ids)] == tokenizer.offsets(PROMPT)
    assert lp["text_offset"][len(ids)] == len(echoed)
    assert_each_token_where_the_text_has_it(choice["text"], lp["tokens"], lp["text_offset"])
    # Without echo, the generated tokens' offsets count from the completion's start; streamed alike.
    alone = complete(mono_server, **{**body, "echo": False}, ignore_eos=True).json()["choices"][0]
    assert alone["text"] == choice["text"][len(echoed) :]
    assert alone["logprobs"]["text_offset"] == [o - len(echoed) for o in lp["text_offset"][len(ids) :]]
    with httpx.stream(
        "POST", f"{mono_server.url}/v1/completions", json={**body, "stream": True, "ignore_eos": True}, timeout=60
    ) as response:
        chunks = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
    streamed = [json.loads(c)["choices"][0] for c in chunks]
    assert "".join(c["text"] for c in streamed) == choice["text"]
    assert [o for c in streamed for o in c["logprobs"]["text_offset"]] == lp["text_offset"]


def test_a_batch_of_token_id_lists_is_one_prompt_each(mono_server, tiny_dir):
    tokenizer = Tokenizer(tiny_dir)
    first, second = tokenizer.encode("The cat"), tokenizer.encode("A dog ran")
    batch = complete(mono_server, prompt=[first, second], max_tokens=4, temperature=0, n=2).json()
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    for k, ids in enumerate((first, second)):
        alone = complete(mono_server, prompt=ids, max_tokens=4, temperature=0).json()
        assert {batch["choices"][2 * k + i]["text"] for i in range(2)} == {alone["choices"][0]["text"]}
    assert batch["usage"]["prompt_tokens"] == len(first) + len(second)
    mixed = complete(mono_server, prompt=["a", [1, 2]], max_tokens=1)
    assert mixed.status_code == 400 and mixed.json()["error"]["param"] == "prompt"
    assert "not both" in mixed.json()["error"]["message"]
    bad = complete(mono_server, prompt=[[1, 2], [3, 1.5]], max_tokens=1).json()["error"]
    assert bad["param"] == "prompt" and "item 1[1] is float" in bad["message"]
    outside = complete(mono_server, prompt=[[1], [10**6]], max_tokens=1).json()["error"]
    assert outside["param"] == "prompt" and "outside the vocabulary" in outside["message"]


def test_an_empty_prompt_is_the_start_of_a_document(mono_server):
    empty = complete(mono_server, prompt="", max_tokens=4, temperature=0).json()
    for prompt in ([], [[]], [""]):
        answer = complete(mono_server, prompt=prompt, max_tokens=4, temperature=0).json()
        assert answer["choices"][0]["text"] == empty["choices"][0]["text"], prompt
        assert answer["usage"]["prompt_tokens"] == 1  # <s>


def test_max_tokens_0_returns_the_prompt_and_its_logprobs_with_echo(mono_server, mono_client):
    prompt = "The cat sat on the mat"
    answer = mono_client.completions.create(model="mono", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    choice = answer.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length"
    longer = mono_client.completions.create(model="mono", prompt=prompt, max_tokens=3, echo=True, logprobs=2)
    prompt_tokens = answer.usage.prompt_tokens
    assert choice.logprobs.tokens == longer.choices[0].logprobs.tokens[:prompt_tokens]
    assert choice.logprobs.text_offset == longer.choices[0].logprobs.text_offset[:prompt_tokens]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(
        longer.choices[0].logprobs.token_logprobs[1:prompt_tokens], abs=1e-5
    )
    assert answer.usage.completion_tokens == 0 and answer.usage.total_tokens == prompt_tokens
    quiet = mono_client.completions.create(model="mono", prompt=[prompt, "Hi"], max_tokens=0, n=2)
    assert [(c.text, c.finish_reason) for c in quiet.choices] == [("", "length")] * 4
    streamed = list(
        mono_client.completions.create(
            model="mono",
            prompt=prompt,
            max_tokens=0,
            echo=True,
            logprobs=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in streamed if c.choices]
    reasons = [c.choices[0].finish_reason for c in streamed if c.choices]
    assert "".join(texts) == prompt and reasons[-1] == "length" and streamed[-1].usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError) as refused:
        mono_client.completions.create(model="mono", prompt=prompt, max_tokens=-1)
    assert refused.value.body["param"] == "max_tokens"
