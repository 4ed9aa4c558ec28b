"""Down-projection scalings and the shared-expert scale: hand numbers and fallbacks."""

from __future__ import annotations

import pytest
import torch

from moe2dense_core.arch import get_spec
from moe2dense_core.errors import PlanError
from moe2dense_core.scaling import SCALINGS, get_scaling, scaling_names, shared_scale
from moe2dense_core.scaling.shared import has_shared_gate
from moe2dense_core.stats.layer_stats import LayerStats


def stats_with(
    counts: list[float], weight_sums: list[float], num_tokens: float = 10.0, shared_gate_sum: float = 0.0
):
    e = len(counts)
    return LayerStats(
        layer=1,
        num_experts=e,
        top_k=2,
        num_tokens=torch.tensor(num_tokens, dtype=torch.float64),
        counts=torch.tensor(counts, dtype=torch.float64),
        weight_sums=torch.tensor(weight_sums, dtype=torch.float64),
        shared_gate_sum=torch.tensor(shared_gate_sum, dtype=torch.float64),
    )


ROUTER_MASS = SCALINGS.choose({"name": "uniform", "router_mass": True})


def test_registry_lists_both_methods() -> None:
    assert scaling_names() == ["proportional", "uniform"]
    with pytest.raises(PlanError, match="unknown scaling 'learned'; known: proportional, uniform"):
        get_scaling("learned")


def test_uniform_is_one_over_k() -> None:
    stats = stats_with([5, 5, 5, 5], [2.0, 1.0, 1.5, 0.5])
    assert get_scaling("uniform")(stats, [[0], [1, 2], [3]]) == pytest.approx([1 / 3] * 3, abs=0)


def test_uniform_with_router_mass_multiplies_by_mean_applied_mass() -> None:
    # N = 10 tokens, Σ_t Σ_e w_e(t) = 2 + 1 + 1.5 + 0.5 = 5  →  mass 0.5, c_g = 0.5 / 2
    stats = stats_with([5, 5, 5, 5], [2.0, 1.0, 1.5, 0.5])
    assert get_scaling("uniform")(stats, [[0, 1], [2]], ROUTER_MASS) == pytest.approx([0.25, 0.25], abs=1e-15)


def test_router_mass_refuses_statistics_without_tokens() -> None:
    with pytest.raises(PlanError, match="router_mass: layer 1 has no calibration tokens"):
        get_scaling("uniform")(stats_with([0, 0], [0, 0], num_tokens=0.0), [[0], [1]], ROUTER_MASS)


def test_proportional_is_the_group_mean_applied_weight() -> None:
    stats = stats_with([4, 2, 1, 3], [2.0, 1.2, 0.3, 0.9])
    scales = get_scaling("proportional")(stats, [[0, 1], [2], [3]])
    assert scales == pytest.approx([(2.0 + 1.2) / 6, 0.3 / 1, 0.9 / 3], abs=1e-15)


def test_proportional_falls_back_to_the_layer_mean_then_one_over_k() -> None:
    stats = stats_with([4, 0, 0, 4], [3.0, 0.0, 0.0, 1.0])
    assert get_scaling("proportional")(stats, [[0], [1, 2], [3]]) == pytest.approx(
        [0.75, 4.0 / 8, 0.25], abs=1e-15
    )
    never_routed = stats_with([0, 0, 0], [0, 0, 0])
    assert get_scaling("proportional")(never_routed, [[0, 1], [2]]) == [0.5, 0.5]


def test_shared_scale_follows_the_family() -> None:
    stats = stats_with([1, 1], [0.5, 0.5], num_tokens=8.0, shared_gate_sum=3.0)
    assert shared_scale(get_spec("qwen3_moe"), 0, stats) is None
    assert shared_scale(get_spec("deepseek_v2"), 2816, stats) == 1.0
    assert shared_scale(get_spec("qwen2_moe"), 5632, stats) == pytest.approx(3.0 / 8, abs=0)
    assert has_shared_gate(get_spec("qwen2_moe")) and not has_shared_gate(get_spec("deepseek_v3"))


def test_gated_shared_scale_needs_tokens() -> None:
    with pytest.raises(PlanError, match="shared_scale: layer 1 has no calibration tokens"):
        shared_scale(get_spec("qwen2_moe"), 64, stats_with([0, 0], [0, 0], num_tokens=0.0))
