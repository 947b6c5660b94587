"""Linear layers as oneDNN GEMMs on weights reordered once into oneDNN's blocked layout (CPU).

torch's CPU `F.linear` in float32 calls MKL's sgemm, which on non-Intel x86 CPUs takes a
generic code path; oneDNN picks its kernel from the CPU's features on any vendor, and a weight
reordered ahead of time spares every call the reorder. The op is the one torch's own compiler
emits for CPU linears (`mkldnn._linear_pointwise` on a `mkldnn._reorder_linear_weight` weight);
it is private, so `onednn_linear_works` probes it once and the fast path stays off where it fails.
benchmarks/cpu_gemm.py times both forms per shape.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def onednn_linear_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch runs oneDNN's linear for `dtype` on the CPU and agrees with F.linear."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 40, generator=generator).to(dtype)
        bias = torch.randn(48, generator=generator).to(dtype)
        x = torch.randn(3, 5, 40, generator=generator).to(dtype)
        with torch.inference_mode():
            got = _linear(x, _reorder(weight), bias).float()
        want = F.linear(x.double(), weight.double(), bias.double()).float()
        tolerance = 1e-4 if dtype == torch.float32 else 0.5
        return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-2, atol=tolerance))
    except (AttributeError, RuntimeError, NotImplementedError) as error:
        log.info("oneDNN linear unavailable for %s: %s", dtype, error)
        return False


class OneDNNLinear(nn.Module):
    """`nn.Linear`'s forward on a oneDNN-reordered copy of its weight; the dense weight is not kept."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _reorder(linear.weight)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def reorder_linears(module: nn.Module) -> None:
    """Replace every `nn.Linear` under `module` by its `OneDNNLinear`, in place (names unchanged)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, OneDNNLinear(child))
        else:
            reorder_linears(child)
