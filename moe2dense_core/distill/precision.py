"""Mixed precision: bf16 autocast where the hardware has bf16 matrix units, fp32 master weights.

The project's ONE precision rule [defined here]; every component that could run in bf16 (distillation,
the top-k teacher cache, teacher training, calibration with `dtype: auto`, loading models to evaluate or
to serve as teacher) asks `resolve_precision` / `bf16_supported`.
Parameters, gradients and optimizer states always stay float32; only the forward runs under
`torch.autocast(dtype=bfloat16)`. "auto" picks bf16 on a CUDA device that supports it and on a CPU
whose oneDNN backend reports *native* bf16 (AVX512-BF16 or AMX), else fp32. "It runs" is not "it is
native": on a CPU without bf16 units a bf16 autocast matmul runs, ~100x slower than fp32.

Switch: the environment variable `MOE2DENSE_DISABLE_BF16=1` makes `bf16_supported` answer False for
every device, i.e. the library behaves as on a CPU without native bf16 (to reproduce that machine and
measure fp32). It is read here and nowhere else; `0` or unset leaves the hardware's answer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from moe2dense_core.errors import DistillError

DISABLE_BF16_ENV = "MOE2DENSE_DISABLE_BF16"


def resolve_device(requested: str) -> torch.device:
    """A recipe's device: "auto" = the first CUDA device when there is one, else the CPU; any other
    name ("cpu", "cuda", "cuda:1") as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def bf16_disabled_by_environment() -> bool:
    """True when `MOE2DENSE_DISABLE_BF16` is "1"; "0" or unset is False; anything else is an error."""
    value = os.environ.get(DISABLE_BF16_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise DistillError(f"{DISABLE_BF16_ENV}={value!r}: use 1 (behave as without native bf16) or 0")
    return value == "1"


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bf16 matmuls natively (CUDA: compute capability; CPU: oneDNN bf16),
    unless `MOE2DENSE_DISABLE_BF16=1` (module docstring)."""
    if bf16_disabled_by_environment():
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """ "bf16" or "fp32" for `requested` in {"auto", "bf16", "fp32"}; bf16 on an unsupported device errors."""
    if requested == "fp32":
        return "fp32"
    if requested not in ("auto", "bf16"):
        raise DistillError(f"unknown precision {requested!r}; choose auto, bf16 or fp32")
    supported = bf16_supported(device)
    if requested == "bf16" and not supported:
        raise DistillError(
            f"precision='bf16' requested but device {device} has no native bf16 support"
            f"{f' ({DISABLE_BF16_ENV}=1)' if bf16_disabled_by_environment() else ''}; use 'auto'"
        )
    return "bf16" if supported else "fp32"


def compute_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The dtype to run a model's forward in: "auto" → bfloat16 where `resolve_precision("auto")` says
    bf16, else float32; "float32" / "bfloat16" / "float16" as named."""
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested == "auto":
        return torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32
    if requested not in named:
        raise DistillError(f"unknown dtype {requested!r}; choose auto, float32, bfloat16 or float16")
    return named[requested]


def load_dtype(device: torch.device) -> str | torch.dtype:
    """`dtype=` for `from_pretrained` of a model that only runs forward on `device`: "auto" (the
    checkpoint's own dtype) where bf16 is native, else float32 (a bf16/fp16 checkpoint is upcast
    exactly instead of computing in non-native half precision)."""
    return "auto" if bf16_supported(device) else torch.float32


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast on `device` when precision == "bf16"; a no-op for "fp32"."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
