"""The composition root: the user's --model/--dtype/--device to a loaded model and its preprocessor, or
to an engine. It depends on model, preprocessing and engine; none of them depends on it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from monovl.engine.llm_engine import EngineConfig, LLMEngine, TokenizerInfo
from monovl.model.fast_path import DEFAULT as FAST_PATH_DEFAULT
from monovl.model.loader import CheckpointError, load_model, parse_dtype, resolve_checkpoint
from monovl.model.mono_internvl import MonoInternVL
from monovl.preprocessing.processor import Preprocessor
from monovl.preprocessing.tiny_checkpoint import ensure_demo_checkpoint


@dataclass
class LoadedCheckpoint:
    directory: Path
    model: MonoInternVL
    preprocessor: Preprocessor

    @property
    def tokens(self) -> TokenizerInfo:
        pre = self.preprocessor
        return TokenizerInfo(pre.tokenizer, tuple(pre.stop_token_ids), pre.img_context_id, pre.tokenizer.text_pieces())


def parse_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CheckpointError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for but no CUDA device is available")
    return device


def checkpoint_directory(model: str | None) -> Path:
    """The checkpoint's directory: a local one, a hub id's download, or the demo's when None."""
    if model is not None:
        return resolve_checkpoint(model)
    directory, created = ensure_demo_checkpoint()
    verb = "created" if created else "using"
    print(f"monovl: no --model given; {verb} the tiny random demo checkpoint {directory}", file=sys.stderr)
    return directory


def load_checkpoint(model: str | None, dtype: str, device: str, fast_path: str = FAST_PATH_DEFAULT) -> LoadedCheckpoint:
    """The model (or the demo checkpoint when None) on its device, weights laid out for `fast_path`."""
    directory = checkpoint_directory(model)
    torch_device = parse_device(device)
    loaded = load_model(directory, parse_dtype(dtype, torch_device), torch_device, fast_path)
    return LoadedCheckpoint(directory, loaded, Preprocessor(directory, loaded.config))


def build_engine(
    directory: Path, dtype: str, device: str, fast_path: str, config: EngineConfig, detokenize: bool = True
) -> LLMEngine:
    """The engine over the checkpoint in `directory`: what `monovl serve` builds where its engine runs
    (a module-level function, so that it can be sent to an engine process)."""
    loaded = load_checkpoint(str(directory), dtype, device, fast_path)
    return LLMEngine(loaded.model, loaded.tokens, config, detokenize)
