"""The text of each completion: its engine outputs' tokens detokenized, and its stop strings.

The engine's outputs carry token ids; this turns them into text where the text is needed. An
`LLMEngine` in the caller's process runs one beside its steps; the server's front end
(engine/async_llm.py) runs one on its side of the core's pipe, so the core's step loop spends
nothing on text. A completion whose text reaches a stop string finishes here: its
output is cut after the token that completed it, and `Processed.stopped` names it, so that its
engine stops generating it. What the engine sends for it after that is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

from monovl.engine.detokenizer import IncrementalDetokenizer, TokenDecoder
from monovl.engine.outputs import RequestOutput, RequestTimings
from monovl.engine.sampling_params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Completion:
    detokenizer: IncrementalDetokenizer
    stop_token_ids: frozenset[int]
    first_timings: RequestTimings | None = None  # the engine's, with the completion's first output
    first_seen: float = 0.0  # when that output came


@dataclass
class Processed:
    outputs: list[RequestOutput]
    stopped: list[tuple[str, int]] = field(default_factory=list)  # (request id, index): stop them in the engine


class OutputProcessor:
    """Each open completion's detokenizer, by (request id, index). Thread-safe: requests are added and
    removed on one thread while outputs are processed on another."""

    def __init__(self, decoder: TokenDecoder, stop_token_ids: tuple[int, ...]) -> None:
        self.decoder = decoder
        self.stop_token_ids = stop_token_ids  # the template's and generation_config's
        self._completions: dict[tuple[str, int], _Completion] = {}
        self._lock = threading.Lock()

    def add(self, request_id: str, params: SamplingParams) -> None:
        stop_ids = params.stop_ids(self.stop_token_ids)
        with self._lock:
            for index in range(params.n):
                detokenizer = IncrementalDetokenizer(self.decoder, params.stop, params.skip_special_tokens)
                self._completions[(request_id, index)] = _Completion(detokenizer, stop_ids)

    def remove(self, request_id: str) -> None:
        with self._lock:
            for key in [key for key in self._completions if key[0] == request_id]:
                del self._completions[key]

    def __len__(self) -> int:
        return len(self._completions)

    def detokenizer(self, request_id: str, index: int = 0) -> IncrementalDetokenizer:
        with self._lock:
            return self._completions[(request_id, index)].detokenizer

    def process(self, outputs: list[RequestOutput]) -> Processed:
        processed = Processed([])
        with self._lock:
            found = [(output, self._completions.get((output.request_id, output.index))) for output in outputs]
        done = []
        for output, completion in found:
            if completion is None:  # finished here already, or its request was removed
                continue
            try:
                text, stopped = self._text(completion, output)
            except Exception:  # one completion's text must not stop the others
                log.exception("request %s failed while detokenizing its output", output.request_id)
                text, stopped = _failed(output), True
            key = (output.request_id, output.index)
            if text.finished:
                done.append(key)
            if stopped and not output.finished:
                processed.stopped.append(key)
            processed.outputs.append(text)
        with self._lock:
            for key in done:
                self._completions.pop(key, None)
        return processed

    def _text(self, completion: _Completion, output: RequestOutput) -> tuple[RequestOutput, bool]:
        """The output with its text; True when a stop string finished it here."""
        if completion.first_timings is None and output.timings is not None:
            completion.first_timings, completion.first_seen = output.timings, time.monotonic()
        detokenizer = completion.detokenizer
        ids = output.new_token_ids
        offsets = []
        for taken, token in enumerate(ids, 1):
            offsets.append(len(detokenizer.text))
            # A stop token ends the text and is not part of it (as vLLM), special or not; the engine
            # finishes a completion on one, so only an output's last token can be one.
            if output.finish_reason == "stop" and taken == len(ids) and token in completion.stop_token_ids:
                break
            if detokenizer.append(token) is not None:
                return self._stopped_at(completion, output, taken, offsets), True
        if output.finished:
            detokenizer.flush()
        timings = output.timings if output.finished else None  # with the last output, as the engine's
        text = detokenizer.take_delta(output.finished)
        return replace(output, new_text=text, timings=timings, new_text_offsets=tuple(offsets)), False

    def _stopped_at(
        self, completion: _Completion, output: RequestOutput, taken: int, offsets: list[int]
    ) -> RequestOutput:
        """The output cut after its `taken`-th token, which completed a stop string."""
        dropped = len(output.new_token_ids) - taken
        logprobs = output.new_logprobs[:taken] if len(output.new_logprobs) == len(output.new_token_ids) else []
        first, timings = completion.first_timings, None
        if first is not None:
            timings = replace(first, decode=first.decode + time.monotonic() - completion.first_seen)
        return replace(
            output,
            new_token_ids=output.new_token_ids[:taken],
            new_text=completion.detokenizer.take_delta(True),
            new_logprobs=logprobs,
            finished=True,
            finish_reason="stop",
            num_output_tokens=output.num_output_tokens - dropped,
            error=None,
            timings=timings,
            new_text_offsets=tuple(offsets),
        )


def _failed(output: RequestOutput) -> RequestOutput:
    return replace(
        output,
        new_token_ids=[],
        new_text="",
        new_logprobs=[],
        finished=True,
        finish_reason="error",
        error="internal error while detokenizing the output",
        timings=None,
    )
