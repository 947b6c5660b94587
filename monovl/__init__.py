"""monovl: Mono-InternVL vision-language models served behind an OpenAI-compatible API.

The one installed top-level package. Its subpackages live in the repository's top-level folders
(pyproject.toml maps them): `monovl.server` (HTTP and the command line), `monovl.engine` (the
batched engine), `monovl.model` (the network) and `monovl.preprocessing` (images and prompts).
"""
