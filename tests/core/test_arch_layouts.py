"""The declared expert layouts: writing canonical experts into a fused layout and splitting them back is the
identity for every axis order and gate/up arrangement (the real families check each layout they use against
transformers' own modules in test_arch_families), and a declaration that is not a layout is refused."""

from __future__ import annotations

import pytest
import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.layouts import GATE_UP_SPLITS, ORDERS, FusedLayout
from moe2dense_core.arch.spec import MoEArchSpec


def _experts(biases: bool) -> ExpertWeights:
    g = torch.Generator().manual_seed(0)
    e, i, h = 3, 4, 5

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return ExpertWeights(
        gate=rand(e, i, h),
        up=rand(e, i, h),
        down=rand(e, h, i),
        gate_bias=rand(e, i) if biases else None,
        up_bias=rand(e, i) if biases else None,
        down_bias=rand(e, h) if biases else None,
    )


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("split", GATE_UP_SPLITS)
def test_write_then_split_is_the_identity(order: str, split: str) -> None:
    layout = FusedLayout("gu", "d", order=order, gate_up_split=split, gate_up_bias="gub", down_bias="db")
    experts = _experts(biases=True)
    written = layout.write("p.", experts)
    assert written["p.gu"].shape == ((3, 8, 5) if order == "out_in" else (3, 5, 8))
    back = layout.split(written["p.gu"], written["p.d"], written["p.gub"], written["p.db"])
    for field in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"):
        assert torch.equal(getattr(back, field), getattr(experts, field)), field


def test_the_two_arrangements_place_gate_and_up_as_declared() -> None:
    experts = _experts(biases=False)
    halves = FusedLayout("gu", "d").write("", experts)["gu"]
    interleaved = FusedLayout("gu", "d", gate_up_split="interleaved").write("", experts)["gu"]
    assert torch.equal(halves[:, :4], experts.gate) and torch.equal(halves[:, 4:], experts.up)
    assert torch.equal(interleaved[:, 0::2], experts.gate) and torch.equal(interleaved[:, 1::2], experts.up)


def test_missing_bias_slots_are_zero_and_biases_without_a_slot_are_refused() -> None:
    with_slots = FusedLayout("gu", "d", gate_up_bias="gub", down_bias="db").write("", _experts(biases=False))
    assert not with_slots["gub"].any() and not with_slots["db"].any()
    with pytest.raises(ValueError, match="has no gate_up_bias"):
        FusedLayout("gu", "d").write("", _experts(biases=True))


def test_a_declaration_that_is_not_a_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="FusedLayout.order: 'rows'"):
        FusedLayout("gu", "d", order="rows")
    with pytest.raises(ValueError, match="FusedLayout.gate_up_split: 'zigzag'"):
        FusedLayout("gu", "d", gate_up_split="zigzag")
    with pytest.raises(TypeError, match="Toy.dense_ffn: 'moe'"):
        type("Toy", (MoEArchSpec,), {"model_type": "toy", "dense_model_type": "toy", "dense_ffn": "moe"})
