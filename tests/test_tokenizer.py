"""Token ids against sentencepiece itself, with special and added tokens in the text."""

import json
import random

import pytest
import sentencepiece as spm

from monovl.engine.detokenizer import text_offsets
from monovl.preprocessing.tokenizer import Tokenizer, TokenizerError


@pytest.fixture(scope="module", params=[1, 0], ids=["dummy-prefix", "no-dummy-prefix"])
def checkpoint(request, make_checkpoint):
    return make_checkpoint(add_dummy_prefix=bool(request.param))


def sp_of(directory):
    return spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))


def test_ids_are_looked_up_by_string_with_the_real_layout(checkpoint):
    tok, sp = Tokenizer(checkpoint), sp_of(checkpoint)
    pieces = sp.get_piece_size()
    assert (tok.token_id("<unk>"), tok.token_id("<s>"), tok.token_id("</s>")) == (0, 1, 2)
    assert tok.token_id("<|im_start|>") == pieces - 1 and tok.token_id("<|im_end|>") == pieces - 2
    assert tok.token_id("<img>") == pieces and tok.token_id("</box>") == pieces + 8
    assert tok.vocab_size == pieces + 9
    with pytest.raises(TokenizerError):
        tok.token_id("<not-a-token>")


def test_special_tokens_split_the_text_and_each_chunk_is_encoded_alone(checkpoint):
    tok, sp = Tokenizer(checkpoint), sp_of(checkpoint)
    text = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is it?<|im_end|><|im_start|>assistant\n"
    ids = [tok.token_id(t) for t in ("<|im_start|>",)] + sp.encode("user\n")
    ids += [tok.token_id(t) for t in ("<img>", "<IMG_CONTEXT>", "<IMG_CONTEXT>", "</img>")]
    ids += [*sp.encode("\nWhat is it?"), tok.token_id("<|im_end|>"), tok.token_id("<|im_start|>")]
    ids += sp.encode("assistant\n")
    assert tok.encode(text) == [1, *ids]
    assert tok.encode(text, add_special_tokens=False) == ids


def test_dummy_prefix_follows_the_model_file(make_checkpoint):
    with_prefix, without = (
        Tokenizer(make_checkpoint(add_dummy_prefix=True)),
        Tokenizer(make_checkpoint(add_dummy_prefix=False)),
    )
    first_with = with_prefix.id_to_piece(with_prefix.encode("</img>\nHello", False)[1])
    first_without = without.id_to_piece(without.encode("</img>\nHello", False)[1])
    assert first_with.startswith("▁") and not first_without.startswith("▁")


def test_literal_special_tokens_and_bos_in_user_text(checkpoint):
    tok = Tokenizer(checkpoint)
    ids = tok.encode("a</s><s>b", add_special_tokens=False)
    assert 2 in ids and 1 in ids


def test_text_without_specials_equals_sentencepiece(checkpoint):
    tok, sp = Tokenizer(checkpoint), sp_of(checkpoint)
    for text in ["", "Hello, world!", "图片中有一只猫", "emoji 🙂 and \t tabs\n\nnew lines", "3.14159 x 448"]:
        assert tok.encode(text) == [1, *sp.encode(text)]


def test_rstrip_and_lstrip_tokens_eat_whitespace(tmp_path, tiny_dir):
    for name in ("tokenizer.model", "special_tokens_map.json", "added_tokens.json"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    img_id = next(k for k, v in config["added_tokens_decoder"].items() if v["content"] == "<img>")
    config["added_tokens_decoder"][img_id].update(lstrip=True, rstrip=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok, sp = Tokenizer(tmp_path), sp_of(tiny_dir)
    assert tok.encode("a  <img>  b", False) == [*sp.encode("a"), int(img_id), *sp.encode("b")]
    # The eaten whitespace belongs to no token: <img> begins at 3, the "b" after it at 10.
    assert tok.offsets("a  <img>  b") == [0, *[0] * len(sp.encode("a")), 3, *[10] * len(sp.encode("b"))]


OFFSET_TEXTS = [
    "",
    "Hello world",
    " Hello",
    "a  b ",
    "héllo 日本 🙂a",
    "\n\nfoo\tbar",
    "x<|im_start|>y<|im_end|>\n z",
    "<s>x</s> y",
    "  \t x\n y",
]


def prefix_lengths(tok: Tokenizer, ids: list[int], skip_special_tokens: bool) -> list[int]:
    """How much text the tokens before each one decode to, a character still unfinished left out."""
    return [len(tok.decode(ids[:k], skip_special_tokens).rstrip("\ufffd")) for k in range(len(ids))]


def test_offsets_are_where_each_token_begins_in_the_text(checkpoint):
    tok = Tokenizer(checkpoint)
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\n", "\t", "é", "日", "🙂", "<|im_end|>", "<img>", "ell", "o w"]
    texts = OFFSET_TEXTS + ["".join(rng.choices(alphabet, k=rng.randrange(1, 30))) for _ in range(50)]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids[1:], skip_special_tokens=False) == text  # so its prefixes say where tokens begin
        assert tok.offsets(text) == [0, *[n for n in prefix_lengths(tok, ids[1:], False)]], text


def test_text_offsets_of_any_ids_are_where_the_decoded_text_has_them(checkpoint):
    tok = Tokenizer(checkpoint)
    rng = random.Random(1)
    for _ in range(200):  # byte pieces, specials and unknown ids among them
        ids = [rng.randrange(tok.vocab_size + 2) for _ in range(rng.randrange(1, 30))]
        for skip in (True, False):
            assert text_offsets(tok, ids, skip) == prefix_lengths(tok, ids, skip), ids


def test_decode_skips_special_tokens_and_joins_bytes(tiny_dir):
    tok = Tokenizer(tiny_dir)
    text = "Describe 图片 🙂 please."
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode([tok.token_id("<|im_start|>"), *ids, tok.token_id("<|im_end|>"), 2]) == text
    assert tok.decode([tok.token_id("<img>")], skip_special_tokens=False) == "<img>"


def test_ids_past_the_tokenizer_have_no_text(checkpoint):
    # A config vocab padded past the tokenizer (as fine-tunes often are) lets a model sample such ids.
    tok = Tokenizer(checkpoint)
    ids = tok.encode("hello world")
    beyond = [tok.vocab_size, tok.vocab_size + 7, -1]
    assert tok.decode(ids[:2] + beyond + ids[2:]) == tok.decode(ids)
    assert [tok.id_to_piece(i) for i in beyond] == ["", "", ""]
