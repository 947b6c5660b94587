"""The checkpoint's own tokenizer: sentencepiece plus the added tokens of `tokenizer_config.json`.

Encoding follows the reference (InternLM2Tokenizer on transformers' slow path): the text is split
on every added or special token (longest match at the earliest position), each token keeps its
id, and each text chunk between them is encoded by sentencepiece on its own, with the model
file's own normalizer (so `add_dummy_prefix` applies per chunk). `<s>` goes in front.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    special: bool
    lstrip: bool = False
    rstrip: bool = False


class TokenizerError(ValueError):
    """A tokenizer that is missing or inconsistent."""


class Tokenizer:
    def __init__(self, checkpoint_dir: str | Path) -> None:
        directory = Path(checkpoint_dir)
        model_file = directory / "tokenizer.model"
        if not model_file.is_file():
            raise TokenizerError(f"no tokenizer.model in {directory}")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        config = _read_json(directory / "tokenizer_config.json")
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))
        self.added = _added_tokens(self.sp, config, directory)
        by_length = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, by_length)) + ")") if by_length else None
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.num_pieces = self.sp.get_piece_size()
        self.vocab_size = max([self.num_pieces - 1, *(t.id for t in self.added.values())]) + 1
        self.special_ids = frozenset(
            [t.id for t in self.added.values() if t.special]
            + [i for i in (self.bos_id, self.eos_id, self.sp.pad_id()) if i >= 0]
        )
        self._added_by_id = {t.id: t for t in self.added.values()}

    @functools.cached_property
    def max_chars_per_token(self) -> int:
        """The most characters of text one token stands for: its longest piece or added token (a byte
        piece stands for less than one character)."""
        sp = self.sp
        lengths = [
            len(sp.id_to_piece(i))
            for i in range(self.num_pieces)
            if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))
        ]
        return max([1, *lengths, *(len(token) for token in self.added)])

    def token_id(self, token: str) -> int:
        """The id of one token by its string; an error if the vocabulary has no such token."""
        if token in self.added:
            return self.added[token].id
        piece_id = self.sp.piece_to_id(token)
        if piece_id == self.sp.unk_id() and token != self.sp.id_to_piece(piece_id):
            raise TokenizerError(f"the tokenizer has no token {token!r}")
        return piece_id

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_id] if add_special_tokens and self.add_bos else []
        for chunk, token, _ in self._chunks(text):
            if token is not None:
                ids.append(token.id)
            elif chunk:
                ids.extend(self.sp.encode(chunk))
        if add_special_tokens and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def offsets(self, text: str) -> list[int]:
        """Where each token of `encode(text)` begins in `text`, in characters: sentencepiece's own
        offsets into each chunk (a leading space is a piece's own; every byte piece of a character
        begins where the character does), `<s>` at 0 and `</s>` at the end."""
        offsets = [0] if self.add_bos else []
        for chunk, token, start in self._chunks(text):
            if token is not None:
                offsets.append(start)
            elif chunk:
                chars = _char_index(chunk)
                offsets.extend(start + chars[piece.begin] for piece in self.sp.encode(chunk, out_type="proto").pieces)
        if self.add_eos:
            offsets.append(len(text))
        return offsets

    def _chunks(self, text: str) -> list[tuple[str, AddedToken | None, int]]:
        """(text, None, start) for each run of text between added tokens, (content, token, start) for
        each added token; `start` is where it begins in `text`."""
        if self._split is None:
            return [(text, None, 0)]
        parts = self._split.split(text)
        chunks: list[tuple[str, AddedToken | None, int]] = []
        start = 0
        for k, part in enumerate(parts):
            chunks.append((part, self.added[part] if k % 2 else None, start))
            start += len(part)
        # lstrip/rstrip added tokens eat the whitespace beside them, as transformers does.
        for k in range(1, len(chunks), 2):
            token = chunks[k][1]
            assert token is not None
            if token.rstrip:
                after, _, at = chunks[k + 1]
                kept = after.lstrip()
                chunks[k + 1] = (kept, None, at + len(after) - len(kept))
            if token.lstrip:
                before, _, at = chunks[k - 1]
                chunks[k - 1] = (before.rstrip(), None, at)
        return chunks

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of the ids; special tokens dropped, added non-special tokens as their string."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if skip_special_tokens and i in self.special_ids:
                continue
            token = self._added_by_id.get(i)
            if token is None:
                if 0 <= i < self.num_pieces:
                    run.append(i)
                # else: a row of a config vocab padded past the tokenizer; it has no text
                continue
            out.append(self.sp.decode(run))
            out.append(token.content)
            run = []
        out.append(self.sp.decode(run))
        return "".join(out)

    def text_pieces(self) -> tuple[str, ...]:
        """Every id's piece as a grammar engine reads it: sentencepiece's own form ("▁" for a space,
        "<0x0A>" for a byte), an added token's content, and "" for a special, control or unknown token,
        which stand for no text."""
        sp = self.sp

        def no_text(i: int) -> bool:
            return i in self.special_ids or (i < self.num_pieces and (sp.is_control(i) or sp.is_unknown(i)))

        return tuple("" if no_text(i) else self.id_to_piece(i) for i in range(self.vocab_size))

    def id_to_piece(self, token_id: int) -> str:
        token = self._added_by_id.get(token_id)
        if token:
            return token.content
        return self.sp.id_to_piece(token_id) if 0 <= token_id < self.num_pieces else ""


def _char_index(text: str) -> list[int]:
    """For each byte offset into text's UTF-8 (and its end), the character it falls in."""
    if text.isascii():
        return list(range(len(text) + 1))
    index = []
    for k, char in enumerate(text):
        index.extend([k] * len(char.encode("utf-8")))
    index.append(len(text))
    return index


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from None


def _added_tokens(sp: spm.SentencePieceProcessor, config: dict, directory: Path) -> dict[str, AddedToken]:
    """Every token that is never split: added_tokens_decoder, added_tokens.json, special tokens."""
    tokens: dict[str, AddedToken] = {}
    for key, spec in config.get("added_tokens_decoder", {}).items():
        tokens[spec["content"]] = AddedToken(
            spec["content"],
            int(key),
            bool(spec.get("special", False)),
            bool(spec.get("lstrip", False)),
            bool(spec.get("rstrip", False)),
        )
    for content, token_id in _read_json(directory / "added_tokens.json").items():
        tokens.setdefault(content, AddedToken(content, int(token_id), special=True))
    specials = [config.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    specials += config.get("additional_special_tokens", [])
    for entry in specials:
        content = entry.get("content") if isinstance(entry, dict) else entry
        if not content or content in tokens:
            continue
        piece_id = sp.piece_to_id(content)
        if piece_id == sp.unk_id() and content != sp.id_to_piece(piece_id):
            raise TokenizerError(f"special token {content!r} is neither in tokenizer.model nor added")
        tokens[content] = AddedToken(content, piece_id, special=True)
    return tokens
