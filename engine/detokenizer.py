"""Incremental detokenization with stop strings.

Each step decodes a short window of the latest ids and emits only what the window added, so a
sentencepiece piece's leading space is kept and a character split over byte-fallback pieces is
held until it is whole (sentencepiece renders a partial one as U+FFFD). Text that could still
become a stop string is held back until it cannot, and a stop string is never emitted.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class TokenDecoder(Protocol):
    special_ids: frozenset[int]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, decoder: TokenDecoder, stop: tuple[str, ...] = (), skip_special_tokens: bool = True) -> None:
        self.decoder = decoder
        self.stop = stop
        self.skip_special_tokens = skip_special_tokens
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""
        self.emitted = 0

    def append(self, token_id: int) -> str | None:
        """Add one generated token; returns the stop string it completed, if any."""
        if self.skip_special_tokens and token_id in self.decoder.special_ids:
            return None
        self.ids.append(token_id)
        return self._advance(final=False)

    def _advance(self, final: bool) -> str | None:
        window = self.decoder.decode(self.ids[self.prefix_offset :], self.skip_special_tokens)
        before = self.decoder.decode(self.ids[self.prefix_offset : self.read_offset], self.skip_special_tokens)
        if len(window) <= len(before) or (window.endswith(REPLACEMENT_CHAR) and not final):
            return None
        start = len(self.text)
        self.text += window[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._find_stop(start)

    def _find_stop(self, start: int) -> str | None:
        hits = [(at, stop) for stop in self.stop if (at := self.text.find(stop, max(0, start - len(stop) + 1))) >= 0]
        if not hits:
            return None
        at, stop = min(hits)
        self.text = self.text[:at]
        return stop

    def flush(self) -> None:
        """At the end, decode whatever is still held (an unfinished character included)."""
        if self.read_offset < len(self.ids):
            self._advance(final=True)

    def take_delta(self, finished: bool) -> str:
        """New text to emit; while running, the tail that may start a stop string stays held."""
        end = len(self.text) if finished or not self.stop else max(self.emitted, len(self.text) - self.hold)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta


def text_offsets(decoder: TokenDecoder, ids: list[int], skip_special_tokens: bool = True) -> list[int]:
    """Where each id's text begins in the text decoded from them, as the incremental decoding makes it
    (a character split over byte pieces begins where its first byte does)."""
    text = IncrementalDetokenizer(decoder, (), skip_special_tokens)
    offsets = []
    for token_id in ids:
        offsets.append(len(text.text))
        text.append(token_id)
    return offsets
