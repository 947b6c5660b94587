"""Find a checkpoint (local directory or hub id) and load its safetensors into `MonoInternVL`.

The model is built on the meta device and each checkpoint tensor is read from its memory-mapped
file, converted and assigned in turn, so at no point are there two copies of the weights. Every
checkpoint tensor must fill exactly one parameter of the same shape; anything else is an error
that names the tensors. No code from the checkpoint is ever run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from monovl.model.config import ModelConfig
from monovl.model.fast_path import DEFAULT as FAST_PATH_DEFAULT
from monovl.model.fast_path import FastPath
from monovl.model.internlm2 import InternLM2DecoderLayer, pack_expert_weights
from monovl.model.mono_internvl import MonoInternVL

CHECKPOINT_FILES = ["*.json", "*.safetensors", "tokenizer.model"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or does not fit the model."""


def resolve_checkpoint(model: str) -> Path:
    """A local directory as is; otherwise a hub id, fetched (or found offline) in the HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise CheckpointError(f"model {model!r} is neither a checkpoint directory nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=model, allow_patterns=CHECKPOINT_FILES))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{model!r} is not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) "
            "and the hub cannot be reached (offline?)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"could not fetch {model!r} from the hub: {e}") from None


def parse_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA and float32 on CPU unless asked; float16 is refused (the 2B overflows)."""
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name in ("float16", "half", "fp16"):
        raise CheckpointError(
            "float16 is not supported: Mono-InternVL-2B overflows to NaN in float16; use bfloat16 or float32"
        )
    dtypes = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    if name not in dtypes:
        raise CheckpointError(f"unknown dtype {name!r}: choose auto, bfloat16 or float32")
    return dtypes[name]


def weight_files(checkpoint_dir: Path) -> list[Path]:
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [checkpoint_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"shards named in {index.name} are missing: {', '.join(missing)}")
        return files
    single = checkpoint_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {checkpoint_dir}")


def _checkpoint_tensors(files: list[Path], stack: ExitStack) -> Iterator[tuple[str, object, Path]]:
    for path in files:
        with _unreadable(path):
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
        for name in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            yield name, handle, path


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """A shard that cannot be read (truncated, corrupt, no permission) as a CheckpointError naming it."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CheckpointError(f"cannot read the weights in {path}: {reason}") from None


def load_model(
    checkpoint_dir: Path, dtype: torch.dtype, device: torch.device, fast_path: str = FAST_PATH_DEFAULT
) -> MonoInternVL:
    """The checkpoint's model on `device` in `dtype`, its weights laid out for the fast path
    (`FastPath.parse`: auto, none, or kernel names)."""
    config = ModelConfig.load(checkpoint_dir)
    fast = FastPath.parse(fast_path, device, dtype)
    with torch.device("meta"), _without_random_init():
        model = MonoInternVL(config, fast)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    with ExitStack() as stack:
        sources = {
            name: (handle, path) for name, handle, path in _checkpoint_tensors(weight_files(checkpoint_dir), stack)
        }
        shapes = {name: torch.Size(handle.get_slice(name).get_shape()) for name, (handle, _) in sources.items()}
        _check_names_and_shapes(expected, shapes)
        state = {}
        for name, (handle, path) in sources.items():
            with _unreadable(path):
                state[name] = handle.get_tensor(name).to(device=device, dtype=dtype)
    assign_weights(model, state)
    model.eval().requires_grad_(False)
    model.lay_out_weights()
    return model


def assign_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The checkpoint's tensors into `model` (built on the meta device), by name; a layer built with
    packed experts gets them packed, its Linear weights views of the packed tensors."""
    packed, views = [], {}
    for name, module in model.named_modules():
        if isinstance(module, InternLM2DecoderLayer) and module.packed_experts:
            tensors, layer_views = pack_expert_weights(state, name)
            packed.append((module, tensors))
            views |= layer_views
    model.load_state_dict({**state, **views}, strict=True, assign=True)
    for layer, (w13, w2) in packed:
        layer.w13, layer.w2 = w13, w2


@contextmanager
def _without_random_init() -> Iterator[None]:
    """Module constructors skip torch.nn.init's random fills while the model is built. The checkpoint
    replaces every value anyway, and on the meta device those fills run as Python decompositions that
    import torch._dynamo, a long import at every loading process's start (docs/performance.md,
    Start-up). nn.init is patched only while the model is built, at start, before the threads
    that serve."""
    fills = {name: getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")}
    for name in fills:
        setattr(nn.init, name, _unchanged)
    try:
        yield
    finally:
        for name, fill in fills.items():
            setattr(nn.init, name, fill)


def _unchanged(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


def _check_names_and_shapes(expected: dict[str, torch.Size], found: dict[str, torch.Size]) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = sorted(
        f"{name} (checkpoint {tuple(found[name])}, model {tuple(shape)})"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    )
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if names
    ]
    if problems:
        raise CheckpointError("checkpoint does not match the model config; " + "; ".join(problems))
