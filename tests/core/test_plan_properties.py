"""Property: for any (E, teacher top-k, k, K, scorer, grouper, scaling, options), build_plan on
synthetic statistics either returns a valid plan or raises PlanError before any work — never
another exception, and never a PlanError after scoring.

Valid plan, per MoE layer: K kept experts, unique and in [0, E); exactly k non-empty, disjoint groups
whose union is the kept set; merge weights ≥ 0 summing to 1 per group; k finite, positive scales;
one score per expert; target_width = k·I. "Before work" = the refusal is one `validate_plan_config`
makes from the config alone, or `weight_cluster` asked for without expert weights.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe2dense_core.errors import PlanError
from moe2dense_core.plan import (
    GrouperName,
    PlanConfig,
    ScalingName,
    ScorerName,
    build_plan,
    validate_plan_config,
)
from tests.fixtures.synthetic_stats import qwen3_moe_config, random_expert_weights, simulate_expert_stats

WIDTH, HIDDEN, MOE_LAYERS = 16, 32, [0, 1]


@st.composite
def plan_requests(draw: st.DrawFn) -> tuple[int, int, PlanConfig, bool]:
    """(E, teacher top-k, PlanConfig, expert weights given?) — sizes on both sides of every bound."""
    num_experts = draw(st.integers(1, 10))
    top_k = draw(st.integers(1, num_experts))
    sizes = st.none() | st.integers(1, num_experts + 2)
    config = PlanConfig(
        scoring=draw(st.sampled_from(get_args(ScorerName))),
        num_selected=draw(sizes),
        grouping=draw(st.sampled_from(get_args(GrouperName))),
        scaling=draw(st.sampled_from(get_args(ScalingName))),
        num_groups=draw(sizes),
        router_mass=draw(st.booleans()),
        do_acp_exchange=draw(st.booleans()),
        do_acp_ridge=draw(st.none() | st.floats(1e-6, 10.0)),
        do_acp_exhaustive_limit=draw(st.integers(0, 200)),
        seed=draw(st.integers(0, 3)),
    )
    return num_experts, top_k, config, draw(st.booleans())


def refused_from_the_config(config: PlanConfig, num_experts: int, top_k: int, with_weights: bool) -> bool:
    try:
        validate_plan_config(config, num_experts, top_k)
    except PlanError:
        return True
    return config.grouping == "weight_cluster" and not with_weights


@settings(max_examples=40, deadline=None)
@given(request=plan_requests(), seed=st.integers(0, 5))
def test_build_plan_gives_a_valid_plan_or_refuses_before_work(
    request: tuple[int, int, PlanConfig, bool], seed: int
) -> None:
    num_experts, top_k, config, with_weights = request
    teacher = qwen3_moe_config(
        num_experts=num_experts, top_k=top_k, expert_width=WIDTH, num_layers=len(MOE_LAYERS)
    )
    stats = simulate_expert_stats(teacher, MOE_LAYERS, num_experts=num_experts, top_k=top_k, seed=seed)
    weights = random_expert_weights(num_experts, WIDTH, HIDDEN, seed=seed)
    expert_weights = (lambda layer: weights) if with_weights else None
    if refused_from_the_config(config, num_experts, top_k, with_weights):
        with pytest.raises(PlanError):
            build_plan(stats, config, expert_weights=expert_weights)
        return
    plan = build_plan(stats, config, expert_weights=expert_weights)  # any exception here fails the property
    sizes = validate_plan_config(config, num_experts, top_k)
    k, big_k = sizes.num_groups, sizes.num_selected
    assert [layer.layer for layer in plan.layers] == MOE_LAYERS
    assert plan.target_width == k * WIDTH
    for layer in plan.layers:
        assert len(layer.kept) == big_k == len(set(layer.kept))
        assert all(0 <= expert < num_experts for expert in layer.kept)
        assert len(layer.scores) == num_experts and not any(math.isnan(s) for s in layer.scores)
        assert len(layer.groups) == k and all(layer.groups)
        members = [expert for group in layer.groups for expert in group]
        assert sorted(members) == sorted(layer.kept)  # disjoint, and covering exactly the kept experts
        for group, merge in zip(layer.groups, layer.merge_weights, strict=True):
            assert (
                len(merge) == len(group) and min(merge) >= 0 and math.isclose(sum(merge), 1.0, abs_tol=1e-9)
            )
        assert len(layer.scales) == k and all(math.isfinite(c) and c > 0 for c in layer.scales)
