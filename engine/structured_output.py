"""Structured outputs: a grammar per request, compiled once, that masks the tokens it cannot take.

xgrammar (vLLM's default backend) compiles JSON schemas, regexes, EBNF grammars and choices against
the checkpoint's vocabulary. Compiling happens off the engine's step (engine/grammar_compiler.py,
within a time limit) and is cached by spec, bounded in bytes; the engine only makes a matcher per
completion, fills the batch's token bitmask and advances each matcher by the token sampled.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    import xgrammar

Kind = Literal["json", "json_object", "regex", "choice", "grammar"]
KINDS: tuple[Kind, ...] = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutput:
    """What a completion must match. `spec`: a JSON schema's text (json), a regex, an EBNF grammar
    (grammar) or a JSON list of strings (choice); unused for json_object."""

    kind: Kind
    spec: str = ""

    @classmethod
    def choice(cls, choices: Sequence[str]) -> StructuredOutput:
        return cls("choice", json.dumps(list(choices), ensure_ascii=False))

    @classmethod
    def json_schema(cls, schema: dict | str) -> StructuredOutput:
        return cls("json", schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False))


# Resident bytes a compiled JSON grammar holds per byte of its `memory_size_bytes` (which leaves
# out the grammar's own structures and the allocator's), rounded up; benchmarks/grammar_memory.py
# measures it. The cache counts grammars at this size, so its bound holds for the process's memory.
RESIDENT_PER_COUNTED_BYTE = 1.4
CACHE_GIB = 0.5  # compiled grammars kept, as vLLM's default


class GrammarError(ValueError):
    """A spec the grammar engine cannot compile; the message says why."""

    code = "invalid_grammar"


class GrammarTooComplex(GrammarError):
    """A spec that did not compile within the time limit."""

    code = "grammar_too_complex"


# xgrammar's messages start with a timestamp and its C++ source position.
_CPP_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")


@dataclass(frozen=True)
class Vocabulary:
    """The model's token strings as the grammar engine reads them: sentencepiece pieces (byte
    fallback, "▁" for a space), "" for special tokens and for rows past the tokenizer."""

    pieces: tuple[str, ...]
    stop_token_ids: tuple[int, ...]


class Grammars:
    """Compiled grammars by spec, least recently used dropped past `cache_bytes`, and their matchers.

    Thread-safe. xgrammar's own cache is off, so this one bounds what compiled grammars hold."""

    def __init__(
        self, vocabulary: Vocabulary, any_whitespace: bool = False, cache_bytes: int = int(CACHE_GIB * 2**30)
    ) -> None:
        self.vocabulary = vocabulary
        # Compact JSON by default: free whitespace lets a weak model pad forever inside the grammar.
        self.any_whitespace = any_whitespace
        self.cache_bytes = cache_bytes
        self._compiled: OrderedDict[StructuredOutput, xgrammar.CompiledGrammar] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._compilers: dict[bool, xgrammar.GrammarCompiler] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary.pieces)

    @property
    def cached_bytes(self) -> int:
        """What the cached grammars hold, as `resident_bytes` counts it."""
        return self._cached_bytes

    def compiler(self, json: bool) -> xgrammar.GrammarCompiler:
        """Made on first use: xgrammar takes seconds to import and a vocabulary pass to set up.

        JSON grammars get a vocabulary without control characters (other than line breaks, which
        are whitespace): JSON never needs them raw, and xgrammar's length-limited string rule lets
        them into strings, where they are invalid."""
        with self._lock:
            if json not in self._compilers:
                import xgrammar as xgr

                pieces = [_without_control(p) for p in self.vocabulary.pieces] if json else self.vocabulary.pieces
                info = xgr.TokenizerInfo(
                    list(pieces),
                    vocab_type=xgr.VocabType.BYTE_FALLBACK,
                    vocab_size=self.vocab_size,
                    stop_token_ids=list(self.vocabulary.stop_token_ids),
                    add_prefix_space=True,
                )
                self._compilers[json] = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            return self._compilers[json]

    def cached(self, spec: StructuredOutput) -> xgrammar.CompiledGrammar | None:
        with self._lock:
            compiled = self._compiled.get(spec)
            if compiled is not None:
                self._compiled.move_to_end(spec)
            return compiled

    def compile(self, spec: StructuredOutput) -> xgrammar.CompiledGrammar:
        """The cached grammar, or one compiled on the calling thread (GrammarError if it cannot be)."""
        compiled = self.cached(spec)
        if compiled is not None:
            return compiled
        compiled = self._compile(self.compiler(json=spec.kind in ("json", "json_object")), spec)
        with self._lock:
            if spec not in self._compiled:
                self._compiled[spec] = compiled
                self._cached_bytes += resident_bytes(compiled)
            while self._cached_bytes > self.cache_bytes and self._compiled:
                _, dropped = self._compiled.popitem(last=False)
                self._cached_bytes -= resident_bytes(dropped)
        return compiled

    def _compile(self, compiler: xgrammar.GrammarCompiler, spec: StructuredOutput) -> xgrammar.CompiledGrammar:
        whitespace = {"any_whitespace": self.any_whitespace}
        try:
            if spec.kind == "json":
                return compiler.compile_json_schema(spec.spec, **whitespace)
            if spec.kind == "json_object":  # any object: properties are not limited to the (absent) schema's
                return compiler.compile_json_schema('{"type": "object"}', strict_mode=False, **whitespace)
            if spec.kind == "regex":
                return compiler.compile_regex(spec.spec)
            if spec.kind == "grammar":
                return compiler.compile_grammar(spec.spec)
            choices = json.loads(spec.spec)
            if not choices:
                raise GrammarError("choice needs at least one string")
            # EBNF string literals take JSON's escapes.
            return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in choices))
        except (RuntimeError, ValueError, TypeError) as error:
            if isinstance(error, GrammarError):
                raise
            message = _CPP_PREFIX.sub("", str(error).strip()).strip()
            raise GrammarError(f"cannot compile the {spec.kind} constraint: {message}") from None

    def matcher(self, spec: StructuredOutput) -> xgrammar.GrammarMatcher:
        return new_matcher(self.compile(spec))


def resident_bytes(compiled: xgrammar.CompiledGrammar) -> int:
    return int(compiled.memory_size_bytes * RESIDENT_PER_COUNTED_BYTE)


def new_matcher(compiled: xgrammar.CompiledGrammar) -> xgrammar.GrammarMatcher:
    import xgrammar as xgr

    return xgr.GrammarMatcher(compiled)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_LINE_BREAKS = {0x0A, 0x0D}


def _without_control(piece: str) -> str:
    """The piece, or "" (no text: never allowed) where it is or holds a control character."""
    byte = _BYTE_PIECE.fullmatch(piece)
    codes = [int(byte[1], 16)] if byte else [ord(c) for c in piece]
    return "" if any(c < 0x20 and c not in _LINE_BREAKS for c in codes) else piece


class GrammarBatch:
    """Fills the token bitmask of a step's constrained rows and applies it in one op."""

    def __init__(self) -> None:
        self._batch_matcher: xgrammar.BatchGrammarMatcher | None = None

    def apply(self, logits: torch.Tensor, matchers: list[xgrammar.GrammarMatcher | None]) -> torch.Tensor:
        """Set to -inf every logit a row's grammar forbids, in place; rows without one are untouched."""
        rows = [b for b, m in enumerate(matchers) if m is not None]
        if not rows:
            return logits
        import xgrammar as xgr

        if self._batch_matcher is None:
            self._batch_matcher = xgr.BatchGrammarMatcher(max_threads="auto")
        vocab = logits.shape[-1]
        bitmask = xgr.allocate_token_bitmask(len(matchers), vocab)
        self._batch_matcher.batch_fill_next_token_bitmask([matchers[b] for b in rows], bitmask, indices=rows)
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device, non_blocking=True), indices=rows)
        return logits
