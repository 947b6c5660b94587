"""`monovl make-tiny-checkpoint`: a random-weight checkpoint in the real Hugging Face layout.

Tests and the demo server use it, so nothing is ever downloaded to try monovl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

from monovl.model.config import ModelConfig
from monovl.model.tiny_weights import TinyShape, config_dict, random_weights, write_shards
from monovl.preprocessing.chat_template import IM_END
from monovl.preprocessing.tiny_tokenizer import write_tiny_tokenizer


def make_tiny_checkpoint(
    directory: Path,
    seed: int = 0,
    shape: TinyShape | None = None,
    vocab_size: int = 1000,
    shards: int = 2,
    add_dummy_prefix: bool = True,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    full_vocab = write_tiny_tokenizer(directory, vocab_size, add_dummy_prefix)
    config = config_dict(shape or TinyShape(), full_vocab)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_shards(directory, random_weights(ModelConfig.from_dict(config), seed), shards)
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    im_end = next(int(i) for i, t in tokenizer_config["added_tokens_decoder"].items() if t["content"] == IM_END)
    generation_config = {"bos_token_id": 1, "eos_token_id": [2, im_end]}
    (directory / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
    return directory


def demo_checkpoint_dir() -> Path:
    """Where the demo checkpoint lives: $MONOVL_CACHE, else $XDG_CACHE_HOME/monovl, else ~/.cache/monovl."""
    root = os.environ.get("MONOVL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "monovl"
    )
    return Path(root) / "demo-checkpoint"


def ensure_demo_checkpoint() -> tuple[Path, bool]:
    """The demo checkpoint, created once; returns (directory, whether it was created now)."""
    target = demo_checkpoint_dir()
    if (target / "config.json").is_file():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent or interrupted run never sees half of it.
    staging = Path(tempfile.mkdtemp(prefix="demo-", dir=target.parent))
    make_tiny_checkpoint(staging)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target, True


def add_shape_args(parser: argparse.ArgumentParser, defaults: TinyShape | None = None) -> None:
    """--hidden, --layers, ... for the size of a random checkpoint."""
    defaults = defaults or TinyShape()
    for field in (f.name for f in fields(TinyShape) if f.type == "int"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    parser.add_argument("--rope-scaling", default=defaults.rope_scaling, help="none, dynamic:F or linear:F")


def shape_from_args(args: argparse.Namespace) -> TinyShape:
    return TinyShape(**{field: getattr(args, field) for field in TinyShape.__dataclass_fields__})


def bench_checkpoint(shape: TinyShape) -> Path:
    """A random checkpoint of this shape for benchmarks, made once under /tmp/monovl-bench."""
    name = "-".join(f"{k}{v}" for k, v in vars(shape).items()).replace(":", "")
    directory = Path("/tmp/monovl-bench") / name
    if not (directory / "config.json").is_file():
        make_tiny_checkpoint(directory, seed=0, shape=shape)
    return directory
