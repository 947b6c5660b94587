"""The installed package's version: one number, pyproject.toml's."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed


def version() -> str:
    try:
        return _installed("monovl")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
