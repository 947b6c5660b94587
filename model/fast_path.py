"""Which optional kernels a forward uses. The plain torch path is the default and the oracle.

Each switch replaces one piece of the decoder with a faster form that equals it to float rounding
(tests/test_fast_path.py compares every one with the plain path):

- `norm`: RMSNorm and the residual add before it in one Triton kernel.
- `rotary`: RoPE on q and k and the KV-cache write in one Triton kernel.
- `silu`: each expert's w1 and w3 as one GEMM on packed weights, then silu(gate) * up in one
  Triton kernel.
- `experts`: both experts as one grouped GEMM over the routed tokens (`torch._grouped_mm`) on the
  packed weights; text-only batches run w1|w3 as one GEMM.
- `onednn` (CPU): every linear layer as a oneDNN GEMM on a weight reordered once
  (`model/onednn_linear.py`).

The loader parses the spec and lays the weights out for it: the experts packed as they load
(`model/loader.py`, `assign_weights`), every linear layer reordered for oneDNN after
(`MonoInternVL.lay_out_weights`). The model keeps its `FastPath`, and every forward runs it.
Packing the experts keeps the checkpoint-named weights as views of the packed tensors, so the
plain path still runs on them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields

import torch

from monovl.model.onednn_linear import onednn_linear_works

log = logging.getLogger(__name__)

NAMES = ("norm", "rotary", "silu", "experts", "onednn")
DEFAULT = "auto"  # the loader's and the command line's


@dataclass(frozen=True)
class FastPath:
    norm: bool = False
    rotary: bool = False
    silu: bool = False
    experts: bool = False
    onednn: bool = False

    @classmethod
    def parse(cls, spec: str, device: torch.device, dtype: torch.dtype) -> FastPath:
        """`auto` (all that runs on the device: on the CPU, only oneDNN, as the grouped GEMM is a loop
        there and Triton an interpreter), `none`, or names joined by commas."""
        if spec == "none":
            return cls()
        if spec == "auto":
            if device.type != "cuda":
                return cls(onednn=onednn_linear_works(device, dtype))
            triton_ok = _triton_imports()
            return cls(triton_ok, triton_ok, triton_ok, grouped_mm_works(device, dtype))
        names = {name.strip() for name in spec.split(",") if name.strip()}
        unknown = names - set(NAMES)
        if unknown:
            raise ValueError(f"unknown fast-path kernels {sorted(unknown)}: use auto, none or some of {NAMES}")
        if names & {"norm", "rotary", "silu"} and not triton_runs_on(device):
            raise ValueError(
                "fast-path kernels norm, rotary and silu are Triton kernels: they need CUDA and Triton "
                "(or TRITON_INTERPRET=1, for tests)"
            )
        if "experts" in names and not grouped_mm_works(device, dtype):
            raise ValueError(f"fast-path 'experts' needs torch._grouped_mm for {dtype} on {device.type}")
        if "onednn" in names and not onednn_linear_works(device, dtype):
            raise ValueError(f"fast-path 'onednn' needs torch's oneDNN linear for {dtype} on a CPU")
        return cls(**{f.name: f.name in names for f in fields(cls)})

    def __str__(self) -> str:
        return ",".join(f.name for f in fields(self) if getattr(self, f.name)) or "none"


def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA, and anywhere under its interpreter (how the CPU tests run them)."""
    return _triton_imports() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """torch._grouped_mm runs on some devices and dtypes only (CUDA: bfloat16 on Hopper); try it once."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.ones(24, 32, device=device, dtype=dtype)
        b = torch.ones(2, 48, 32, device=device, dtype=dtype).transpose(1, 2)
        out = torch._grouped_mm(a, b, offs=torch.tensor([8, 24], device=device, dtype=torch.int32))
        return bool((out == 32).all())
    except (RuntimeError, NotImplementedError) as error:
        log.info("grouped GEMM unavailable for %s on %s: %s", dtype, device, error)
        return False
