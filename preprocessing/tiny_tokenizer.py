"""A tiny tokenizer in the layout of the real InternLM2 one, trained on the spot for tests and demos.

Like the real tokenizer: a sentencepiece BPE model with byte fallback, `<unk>`, `<s>`, `</s>` at
0, 1, 2, the chat tokens as the last pieces of the sentencepiece vocabulary (`<|im_end|>` one
before `<|im_start|>`), then the InternVL tokens added after it; `tokenizer_config.json`,
`special_tokens_map.json` and `added_tokens.json` in the Hugging Face format.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_proto

from monovl.preprocessing.chat_template import DEFAULT_SYSTEM_MESSAGE

# Pieces 92538..92543 of the real sentencepiece model, in this order.
CHAT_PIECES = ("<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>")
ADDITIONAL_SPECIAL = (
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
)
# Added by the InternVL training code after the sentencepiece vocabulary, as special tokens.
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")

_WORDS = (
    "image picture photo tile thumbnail chart table document text caption question answer model "
    "token server request stream batch cache block prefix expert visual language vision patch pixel "
    "layer head red green blue yellow orange purple white black gray dark bright light small large "
    "tall wide square circle line arrow star left right top bottom middle corner above below inside "
    "next behind front cat dog bird tree house car road river mountain city sky cloud sun moon rain "
    "snow street window door describe explain count list read write tell show find compare "
    "summarize translate answer"
).split()
_ZH = (
    "图片中有一只猫和一条狗，天空是蓝色的。请描述这张图片的内容。这是一个文档，上面写着一些文字。我们今天去公园散步了。"
)
_TEMPLATES = (
    "Please {v} the {a} {n}.",
    "What is {p} the {a} {n}?",
    "There are {k} {n}s {p} the {a} {m}.",
    "The {n} is {a}, and the {m} is {b}.",
    "Can you {v} this {n} in {k} words?",
)


def training_text(seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    lines = [DEFAULT_SYSTEM_MESSAGE, _ZH, "Hello! How can I help you today?", "Sure, here is the answer:"]
    for _ in range(1500):
        template = rng.choice(_TEMPLATES)
        lines.append(
            template.format(
                v=rng.choice(_WORDS[-12:]),
                a=rng.choice(_WORDS[24:48]),
                b=rng.choice(_WORDS[24:48]),
                n=rng.choice(_WORDS),
                m=rng.choice(_WORDS),
                p=rng.choice(_WORDS[48:56]),
                k=rng.randint(0, 999),
            )
        )
    chars = list(_ZH)
    lines += ["".join(rng.sample(chars, 12)) for _ in range(200)]
    # Joined lines make "\n" a piece of its own, as in the real vocabulary.
    lines += ["\n".join(lines[i : i + 3]) for i in range(0, 600, 3)]
    return lines


def train_sentencepiece(vocab_size: int, add_dummy_prefix: bool) -> bytes:
    """A BPE model whose last pieces are the chat tokens; `vocab_size` counts them."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=buffer,
        vocab_size=vocab_size - len(CHAT_PIECES),
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    proto = sp_proto.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    for text in CHAT_PIECES:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, 0.0, sp_proto.ModelProto.SentencePiece.USER_DEFINED
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto.SerializeToString()


def _token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_tiny_tokenizer(directory: Path, vocab_size: int = 1000, add_dummy_prefix: bool = True) -> int:
    """Write the tokenizer files; returns the full vocabulary size (pieces plus added tokens)."""
    model = train_sentencepiece(vocab_size, add_dummy_prefix)
    (directory / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    pieces = sp.get_piece_size()
    ids = {text: sp.piece_to_id(text) for text in ("<unk>", "<s>", "</s>", *CHAT_PIECES)}
    ids.update({text: pieces + k for k, text in enumerate(INTERNVL_TOKENS)})
    decoder = {str(i): {**_token_entry(text), "special": True} for text, i in sorted(ids.items(), key=lambda x: x[1])}
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    additional = [*ADDITIONAL_SPECIAL, *INTERNVL_TOKENS]
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        **specials,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "tokenizer_class": "InternLM2Tokenizer",
    }
    special_map = {
        "additional_special_tokens": [*ADDITIONAL_SPECIAL, *map(_token_entry, INTERNVL_TOKENS)],
        **specials,
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "special_tokens_map.json", special_map)
    _write_json(directory / "added_tokens.json", {t: ids[t] for t in INTERNVL_TOKENS})
    return pieces + len(INTERNVL_TOKENS)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
