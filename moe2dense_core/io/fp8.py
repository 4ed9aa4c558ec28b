"""Block-scaled FP8 weights as DeepSeek-V3/R1 (and the Qwen3 *-FP8 releases) store them.

A weight W [R, C] is stored as `….weight` F8_E4M3 [R, C] plus `….weight_scale_inv` F32 [⌈R/b0⌉, ⌈C/b1⌉]
(block size b = quantization_config.weight_block_size, [128, 128] in the releases):
    W[r, c] = weight[r, c] · scale_inv[r // b0, c // b1]
Same result as transformers' `integrations/finegrained_fp8._dequantize_fp8_weight` (compared in the tests).
"""

from __future__ import annotations

from typing import Any

import torch

from moe2dense_core.errors import CheckpointError

SCALE_SUFFIX = "_scale_inv"
DEFAULT_BLOCK = (128, 128)
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def dequantize_fp8_blocks(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = DEFAULT_BLOCK,
    *,
    name: str = "fp8 weight",
) -> torch.Tensor:
    """weight F8 [..., R, C], scale_inv [..., ⌈R/b0⌉, ⌈C/b1⌉] → float32 [..., R, C]."""
    rows, cols = weight.shape[-2:]
    expected = (-(-rows // block[0]), -(-cols // block[1]))
    if tuple(scale_inv.shape[-2:]) != expected or scale_inv.shape[:-2] != weight.shape[:-2]:
        raise CheckpointError(
            f"{name}: FP8 scale_inv shape {tuple(scale_inv.shape)} does not fit weight {tuple(weight.shape)} "
            f"with block {list(block)} (expected [..., {expected[0]}, {expected[1]}])"
        )
    scale = scale_inv.float().repeat_interleave(block[0], dim=-2)[..., :rows, :]
    scale = scale.repeat_interleave(block[1], dim=-1)[..., :cols]
    return weight.float() * scale


def fp8_block_size(config: dict[str, Any]) -> tuple[int, int]:
    """quantization_config.weight_block_size of an FP8 checkpoint (default [128, 128])."""
    block = (config.get("quantization_config") or {}).get("weight_block_size") or DEFAULT_BLOCK
    if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
        raise CheckpointError(
            f"config.json quantization_config.weight_block_size must be two positive ints, got {block}"
        )
    return (block[0], block[1])


def dequantized_dtype(reader: Any, name: str) -> torch.dtype:
    """The dtype `read_dequantized(reader, name)` returns, from the header alone (no data read)."""
    return torch.float32 if reader.dtype(name) in _FP8_DTYPES else reader.dtype(name)


def read_dequantized(reader: Any, name: str) -> torch.Tensor:
    """`reader.get(name)`, dequantised to float32 when it is an FP8 weight with a `…_scale_inv` partner;
    other tensors are returned in their stored dtype."""
    tensor = reader.get(name)
    scale_name = name + SCALE_SUFFIX
    if tensor.dtype in _FP8_DTYPES:
        if scale_name not in reader:
            raise CheckpointError(f"{name}: FP8 weight without its {scale_name!r} in the checkpoint")
        return dequantize_fp8_blocks(tensor, reader.get(scale_name), fp8_block_size(reader.config), name=name)
    return tensor
