"""A text completion's JSON with each prompt's echoed logprobs serialized once.

With `echo` and `logprobs` every choice's logprobs begin with its prompt's, so the n choices of a
prompt carry the same entries n times. Here they are serialized once per prompt, and each choice's
JSON is joined from that text and its own generated part: serializing costs one prompt's entries
rather than n of them (the response still repeats them, as OpenAI's shape has it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.responses import Response

if TYPE_CHECKING:
    from monovl.server.completions import Completion, CompletionLogprobs

_FIELDS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def _dumps(value: object) -> str:
    """As Starlette's JSONResponse renders."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _items(values: list) -> str:
    return _dumps(values)[1:-1]


def echo_response(
    completion: Completion,
    prompts: dict[int, CompletionLogprobs],
    generated: dict[int, CompletionLogprobs],
    n: int,
) -> Response:
    """`completion`, whose choices have no logprobs, with choice i's: prompt i // n's then its own."""
    shared = {k: {field: _items(getattr(lp, field)) for field in _FIELDS} for k, lp in prompts.items()}
    choices = []
    for choice in completion.choices:
        prompt, own = shared[choice.index // n], generated[choice.index]
        arrays = []
        for field in _FIELDS:
            joined = ",".join(part for part in (prompt[field], _items(getattr(own, field))) if part)
            arrays.append(f'"{field}":[{joined}]')
        # In a dumped string a quote is escaped, so this key occurs once, as the key.
        choices.append(
            _dumps(choice.model_dump()).replace('"logprobs":null', '"logprobs":{' + ",".join(arrays) + "}", 1)
        )
    body = _dumps({**completion.model_dump(), "choices": []})
    body = body.replace('"choices":[]', '"choices":[' + ",".join(choices) + "]", 1)
    return Response(body.encode(), media_type="application/json")
