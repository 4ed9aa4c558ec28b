"""MXFP4 (OCP microscaling FP4) as GPT-OSS stores its experts on disk.

Layout of a weight W [..., R, C] (R output rows, C input columns, C a multiple of 32):
    blocks U8 [..., R, G, 16]   G = C / 32; byte j of a block packs values 2j (low nibble) and 2j+1 (high nibble)
    scales U8 [..., R, G]       E8M0 exponent with bias 127, shared by the 32 values of a block
Each nibble indexes the e2m1 table FP4_VALUES; the value is FP4_VALUES[nibble] · 2^(scale − 127).
This is exactly transformers' `integrations/mxfp4._convert_moe_packed_tensors` (which additionally
transposes the last two axes into GPT-OSS's in-memory [..., C, R] layout); the tests compare against it.
"""

from __future__ import annotations

import torch

from moe2dense_core.errors import CheckpointError

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK_SIZE = 32
_SCALE_BIAS = 127
_E2M1_MAX = 6.0


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, *, name: str = "mxfp4 tensor"
) -> torch.Tensor:
    """blocks U8 [..., G, 16], scales U8 [..., G] → float32 [..., G·32] (see module docstring)."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise CheckpointError(
            f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} / {scales.dtype}"
        )
    if blocks.shape[-1] != BLOCK_SIZE // 2 or blocks.shape[:-1] != scales.shape:
        raise CheckpointError(
            f"{name}: MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match "
            f"(expected blocks [..., G, 16] and scales [..., G])"
        )
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32)
    values = torch.empty(*blocks.shape[:-1], BLOCK_SIZE, dtype=torch.float32)
    values[..., 0::2] = lut[(blocks & 0x0F).long()]
    values[..., 1::2] = lut[(blocks >> 4).long()]
    values = torch.ldexp(values, (scales.to(torch.int32) - _SCALE_BIAS).unsqueeze(-1).to(torch.float32))
    return values.reshape(*blocks.shape[:-2], blocks.shape[-2] * BLOCK_SIZE)


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [..., C] (C a multiple of 32) → (blocks U8 [..., C/32, 16], scales U8 [..., C/32]).

    Per block the scale is 2^s with s = ceil(log2(max|x| / 6)) (so every value fits the e2m1 range), and
    each value rounds to the nearest e2m1 grid point (ties to the lower-magnitude code). Values already
    of the form e2m1 · 2^s with a common s per block round-trip exactly; used to build test fixtures.
    """
    if weight.shape[-1] % BLOCK_SIZE:
        raise ValueError(
            f"quantize_mxfp4: last dimension {weight.shape[-1]} is not a multiple of {BLOCK_SIZE}"
        )
    x = weight.to(torch.float32).reshape(*weight.shape[:-1], weight.shape[-1] // BLOCK_SIZE, BLOCK_SIZE)
    amax = x.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.ceil(torch.log2(amax / _E2M1_MAX)), torch.zeros_like(amax))
    exponent = exponent.clamp(-_SCALE_BIAS, 255 - _SCALE_BIAS)
    scaled = x / torch.exp2(exponent).unsqueeze(-1)
    magnitudes = torch.tensor(FP4_VALUES[:8], dtype=torch.float32)
    codes = (scaled.abs().unsqueeze(-1) - magnitudes).abs().argmin(dim=-1)
    codes = codes + 8 * (scaled < 0).long()
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    return packed, (exponent + _SCALE_BIAS).to(torch.uint8)
