"""Shared fixtures: tiny checkpoints made on the spot (nothing is downloaded) and images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monovl.model.loader import load_model
from monovl.model.tiny_weights import TinyShape
from monovl.preprocessing.processor import Preprocessor
from monovl.preprocessing.tiny_checkpoint import make_tiny_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path):
    return load_model(tiny_dir, torch.float32, torch.device("cpu"))


@pytest.fixture(scope="session")
def preprocessor(tiny_dir: Path, tiny_model) -> Preprocessor:
    return Preprocessor(tiny_dir, tiny_model.config)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Factory for checkpoints of other shapes, cached per argument set."""
    made: dict[tuple, Path] = {}

    def make(**kwargs) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            shape = TinyShape(**{k: v for k, v in kwargs.items() if k in TinyShape.__dataclass_fields__})
            rest = {k: v for k, v in kwargs.items() if k not in TinyShape.__dataclass_fields__}
            made[key] = make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), shape=shape, **rest)
        return made[key]

    return make


def png_bytes(width: int, height: int, mode: str = "RGB", seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def generate_cli(checkpoint: Path, prompt: str, max_tokens: int, *extra: str) -> dict:
    """`monovl generate --json` run as a user runs it; its JSON record."""
    cmd = [
        sys.executable,
        "-m",
        "monovl.server.cli",
        "generate",
        "--model",
        str(checkpoint),
        "--json",
        "--prompt",
        prompt,
    ]
    cmd += ["--max-tokens", str(max_tokens), *extra]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


@pytest.fixture(scope="session")
def mono_server(tiny_dir):
    """One server, serving the tiny checkpoint as "mono", for the tests of its API's breadth."""
    from benchmarks.server_process import ServerProcess

    process = ServerProcess(tiny_dir, "--served-model-name", "mono")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def mono_client(mono_server):
    import openai

    return openai.OpenAI(base_url=f"{mono_server.url}/v1", api_key="none", max_retries=0)
