"""The OpenAI-compatible HTTP server and the `monovl` command."""
