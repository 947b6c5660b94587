"""monovl: Mono-InternVL vision-language models served behind an OpenAI-compatible API.

The one installed top-level package. Its subpackages live in the repository's top-level folders
(pyproject.toml maps them): `monovl.server` (HTTP and the command line), `monovl.engine` (the
batched engine), `monovl.model` (the network) and `monovl.preprocessing` (images and prompts).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported when first used, so that `import monovl` (and the command line's start) stays light.
_EXPORTS = {
    "LLM": "monovl.llm",
    "SamplingParams": "monovl.engine.sampling_params",
    "StructuredOutput": "monovl.engine.structured_output",
    "RequestOutput": "monovl.outputs",
    "CompletionOutput": "monovl.outputs",
    "Logprob": "monovl.outputs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'monovl' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
