"""Assembly math on canonical ExpertWeights: merging, concatenation, scaling, zero padding (float64)."""

from __future__ import annotations

import pytest
import torch

from moe2dense_core.arch.expert_weights import Activation, ExpertWeights
from moe2dense_core.assembly.concatenate import concatenate_blocks, pad_to_width
from moe2dense_core.assembly.merge import merge_group
from moe2dense_core.errors import PlanError

SWIGLU = Activation("swiglu")
CLAMPED = Activation("clamped_swiglu")
HIDDEN = 12
WIDTH = 5


def random_experts(num: int, *, width: int = WIDTH, biases: bool = False, seed: int = 0) -> ExpertWeights:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return ExpertWeights(
        gate=rand(num, width, HIDDEN),
        up=rand(num, width, HIDDEN),
        down=rand(num, HIDDEN, width),
        gate_bias=rand(num, width) if biases else None,
        up_bias=rand(num, width) if biases else None,
        down_bias=rand(num, HIDDEN) if biases else None,
    )


def tokens(num: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randn(num, HIDDEN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_merging_a_one_expert_group_copies_it_bit_for_bit():
    expert = random_experts(1, biases=True)
    merged = merge_group(expert, [1.0])
    for name in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
        assert torch.equal(getattr(merged, name), getattr(expert, name))


def test_merging_is_the_weighted_average_of_every_matrix_and_bias():
    members = random_experts(3, biases=True)
    weights = [0.5, 0.3, 0.2]
    merged = merge_group(members, weights)
    for name in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
        stacked = getattr(members, name)
        expected = 0.5 * stacked[0] + 0.3 * stacked[1] + 0.2 * stacked[2]
        torch.testing.assert_close(getattr(merged, name)[0], expected, rtol=0, atol=1e-14)
    assert merged.num_experts == 1


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([0.5, 0.5], "2 weights for a group of 3"),
        ([0.5, 0.6, -0.1], "non-negative"),
        ([0.2, 0.2, 0.2], "sum to 1"),
    ],
)
def test_merging_rejects_weights_that_are_not_a_convex_combination(weights, message):
    with pytest.raises(PlanError, match=message):
        merge_group(random_experts(3), weights)


@pytest.mark.parametrize("activation", [SWIGLU, CLAMPED], ids=["swiglu", "clamped_swiglu"])
@pytest.mark.parametrize("biases", [False, True], ids=["no_bias", "bias"])
def test_dense_ffn_equals_scaled_sum_of_group_experts(activation, biases):
    groups = random_experts(3, biases=biases, seed=3)
    scales = [0.5, 0.25, 1.5]
    blocks = [groups.select([g]) for g in range(3)]
    dense = concatenate_blocks(blocks, scales)
    x = tokens()
    expected = sum(c * f for c, f in zip(scales, groups.forward(x, activation), strict=True))
    assert dense.width == 3 * WIDTH
    torch.testing.assert_close(dense.forward(x, activation)[0], expected, rtol=0, atol=1e-10)


def test_shared_experts_are_appended_and_scaled_by_the_shared_scale():
    groups = random_experts(2, seed=4)
    shared = random_experts(1, width=9, seed=5)
    dense = concatenate_blocks(
        [groups.select([0]), groups.select([1])], [0.5, 0.5], shared=shared, shared_scale=0.7
    )
    x = tokens()
    outputs = groups.forward(x, SWIGLU)
    expected = 0.5 * outputs[0] + 0.5 * outputs[1] + 0.7 * shared.forward(x, SWIGLU)[0]
    assert dense.width == 2 * WIDTH + 9
    torch.testing.assert_close(dense.forward(x, SWIGLU)[0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", [SWIGLU, CLAMPED], ids=["swiglu", "clamped_swiglu"])
def test_zero_padding_to_the_target_width_is_exact(activation):
    groups = random_experts(2, biases=True, seed=6)
    blocks = [groups.select([0]), groups.select([1])]
    natural = concatenate_blocks(blocks, [0.5, 0.5])
    padded = concatenate_blocks(blocks, [0.5, 0.5], target_width=2 * WIDTH + 6)
    x = tokens()
    assert padded.width == 2 * WIDTH + 6
    torch.testing.assert_close(
        padded.forward(x, activation), natural.forward(x, activation), rtol=0, atol=1e-12
    )
    assert torch.count_nonzero(padded.gate[:, 2 * WIDTH :]) == 0
    assert torch.count_nonzero(padded.down[:, :, 2 * WIDTH :]) == 0


def test_block_order_is_irrelevant():
    groups = random_experts(3, seed=7)
    scales = [0.2, 0.3, 0.5]
    forward = concatenate_blocks([groups.select([g]) for g in range(3)], scales)
    backward = concatenate_blocks([groups.select([g]) for g in (2, 1, 0)], scales[::-1])
    x = tokens()
    torch.testing.assert_close(forward.forward(x, SWIGLU), backward.forward(x, SWIGLU), rtol=0, atol=1e-12)


def test_merged_groups_then_concatenated_equal_sum_of_merged_experts():
    members = random_experts(4, seed=8)
    group_a, group_b = (
        merge_group(members.select([0, 1]), [0.75, 0.25]),
        merge_group(members.select([2, 3]), [0.5, 0.5]),
    )
    dense = concatenate_blocks([group_a, group_b], [0.5, 0.5])
    x = tokens()
    expected = 0.5 * group_a.forward(x, SWIGLU)[0] + 0.5 * group_b.forward(x, SWIGLU)[0]
    torch.testing.assert_close(dense.forward(x, SWIGLU)[0], expected, rtol=0, atol=1e-10)


def test_concatenation_rejects_inconsistent_requests():
    groups = random_experts(2)
    blocks = [groups.select([0]), groups.select([1])]
    with pytest.raises(PlanError, match="scales: 1 down-projection scales for 2 groups"):
        concatenate_blocks(blocks, [1.0])
    with pytest.raises(PlanError, match="no shared_scale"):
        concatenate_blocks(blocks, [0.5, 0.5], shared=random_experts(1))
    with pytest.raises(PlanError, match="no shared experts"):
        concatenate_blocks(blocks, [0.5, 0.5], shared_scale=1.0)
    with pytest.raises(PlanError, match="block 1: expected one expert"):
        concatenate_blocks([groups.select([0]), groups], [0.5, 0.5])
    with pytest.raises(PlanError, match="target_width: 3 is smaller"):
        pad_to_width(groups.select([0]), 3)


def test_blocks_streamed_into_a_narrower_dtype_are_the_float64_result_rounded_once():
    """A generator of blocks (one group in memory at a time) into bfloat16 storage: every value is the
    float64 concatenation's, rounded once — as casting the float64 result afterwards gives."""
    groups = random_experts(3, biases=True, seed=9)
    scales = [0.3, 0.3, 0.4]
    reference = concatenate_blocks([groups.select([g]) for g in range(3)], scales, target_width=3 * WIDTH + 4)
    streamed = concatenate_blocks(
        (groups.select([g]) for g in range(3)), scales, target_width=3 * WIDTH + 4, dtype=torch.bfloat16
    )
    for name in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
        got, expected = getattr(streamed, name), getattr(reference, name)
        assert got.dtype == torch.bfloat16 and torch.equal(got, expected.to(torch.bfloat16)), name
