"""MXFP4: our dequantiser equals transformers' GPT-OSS one bit for bit; quantise/dequantise round trip."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.mxfp4 import FP4_VALUES as TRANSFORMERS_FP4_VALUES
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.mxfp4 import FP4_VALUES, dequantize_mxfp4, quantize_mxfp4


def _random_packed(
    generator: torch.Generator, experts: int, rows: int, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = torch.randint(0, 256, (experts, rows, groups, 16), generator=generator, dtype=torch.uint8)
    scales = torch.randint(127 - 8, 127 + 4, (experts, rows, groups), generator=generator, dtype=torch.uint8)
    return blocks, scales


def test_lookup_table_is_transformers_e2m1_table() -> None:
    assert list(FP4_VALUES) == list(TRANSFORMERS_FP4_VALUES)


def test_dequantize_matches_transformers_gpt_oss_conversion() -> None:
    blocks, scales = _random_packed(torch.Generator().manual_seed(0), experts=3, rows=10, groups=4)
    ours = dequantize_mxfp4(blocks, scales)  # [E, rows, G·32]: on-disk [E, out, in] orientation
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # transposed: [E, in, out]
    assert ours.shape == (3, 10, 128)
    assert torch.equal(ours, theirs.transpose(1, 2))


def test_nibble_order_and_scale_by_hand() -> None:
    # byte 0x71: low nibble 1 → +0.5 (value 0), high nibble 7 → +6.0 (value 1); byte 0x8F: 15 → -6, 8 → -0
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0], blocks[0, 1] = 0x71, 0x8F
    scales = torch.tensor([127 + 2], dtype=torch.uint8)  # × 2^2
    values = dequantize_mxfp4(blocks, scales)  # one block [G=1, 16] → [32]
    assert values.shape == (32,)
    assert values[:4].tolist() == [2.0, 24.0, -24.0, -0.0]
    assert values[4:].abs().sum() == 0


def test_quantize_dequantize_round_trip_is_exact_on_representable_values() -> None:
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (5, 64), generator=generator)
    exponents = torch.randint(-6, 4, (5, 2, 1), generator=generator).float()
    weight = (torch.tensor(FP4_VALUES)[codes].reshape(5, 2, 32) * torch.exp2(exponents)).reshape(5, 64)
    weight[:, 0] = 6.0 * torch.exp2(exponents[:, 0, 0])  # each block reaches the top of its range
    weight[:, 32] = -6.0 * torch.exp2(exponents[:, 1, 0])
    blocks, scales = quantize_mxfp4(weight)
    assert blocks.shape == (5, 2, 16) and scales.shape == (5, 2)
    assert torch.equal(dequantize_mxfp4(blocks, scales), weight)


def test_quantize_error_is_bounded_by_half_a_grid_step() -> None:
    weight = torch.randn(8, 96, generator=torch.Generator().manual_seed(2))
    restored = dequantize_mxfp4(*quantize_mxfp4(weight))
    block_max = weight.reshape(8, 3, 32).abs().amax(-1, keepdim=True)
    step = torch.exp2(torch.ceil(torch.log2(block_max / 6.0)))  # largest e2m1 gap (2.0) × scale / 2
    assert ((restored - weight).reshape(8, 3, 32).abs() <= step + 1e-7).all()


def test_mismatched_blocks_and_scales_name_the_tensor() -> None:
    blocks = torch.zeros(2, 3, 16, dtype=torch.uint8)
    with pytest.raises(CheckpointError, match="experts.down_proj_blocks"):
        dequantize_mxfp4(blocks, torch.zeros(2, 4, dtype=torch.uint8), name="experts.down_proj_blocks")
    with pytest.raises(CheckpointError, match="uint8"):
        dequantize_mxfp4(blocks.float(), torch.zeros(2, 3, dtype=torch.uint8))
