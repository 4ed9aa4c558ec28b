"""Mixed precision: bf16 autocast where the hardware has bf16 matrix units, fp32 master weights.

Parameters, gradients and optimizer states always stay float32; only the forward runs under
`torch.autocast(dtype=bfloat16)`. [defined here] "auto" picks bf16 on a CUDA device that supports
it and on a CPU whose oneDNN backend reports bf16 support (AVX512-BF16 or AMX), else fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from moe2dense_core.errors import DistillError


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls natively (CUDA: compute capability; CPU: oneDNN bf16)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """"bf16" or "fp32" for `requested` in {"auto", "bf16", "fp32"}; bf16 on an unsupported device errors."""
    if requested == "fp32":
        return "fp32"
    supported = bf16_supported(device)
    if requested == "bf16" and not supported:
        raise DistillError(f"precision='bf16' requested but device {device} has no bf16 support; use 'auto'")
    if requested not in ("auto", "bf16"):
        raise DistillError(f"unknown precision {requested!r}; choose auto, bf16 or fp32")
    return "bf16" if supported else "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast on `device` when precision == "bf16"; a no-op for "fp32"."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
