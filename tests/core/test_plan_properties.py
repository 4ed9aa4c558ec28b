"""Property: for any (E, teacher top-k, k, K, and any registered scorer, grouper and scaling with any
valid options, drawn from the registries and the methods' options models), build_plan on
synthetic statistics either returns a valid plan or raises PlanError before any work — never
another exception, and never a PlanError after scoring.

Valid plan, per MoE layer: K kept experts, unique and in [0, E); exactly k non-empty, disjoint groups
whose union is the kept set; merge weights ≥ 0 summing to 1 per group; k finite, positive scales;
one score per expert; target_width = k·I. "Before work" = the refusal is one `validate_plan_config`
makes from the config alone, or a grouper that reads expert weights asked for without them.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from moe2dense_core.errors import PlanError
from moe2dense_core.grouping import GROUPERS
from moe2dense_core.plan import PlanConfig, build_plan, validate_plan_config
from moe2dense_core.registry import MethodRegistry
from moe2dense_core.scaling import SCALINGS
from moe2dense_core.scoring import SCORERS
from tests.fixtures.synthetic_stats import qwen3_moe_config, random_expert_weights, simulate_expert_stats

WIDTH, HIDDEN, MOE_LAYERS = 16, 32, [0, 1]
SMALLEST_FLOAT = 1e-6
"""Positive float options start here: a ridge λ near 0 can leave M_S + λI numerically singular, which
do_acp refuses while scoring (a PlanError by design, not a violation of the property)."""


def option_values(field: FieldInfo) -> st.SearchStrategy[Any]:
    """Valid values of one method option from its annotation and bounds, in ranges that cross the
    thresholds of small problems (E ≤ 10: C(E, K) ≤ 252)."""
    kinds = set(get_args(field.annotation)) or {field.annotation}
    bounds = {key: getattr(m, key) for m in field.metadata for key in ("ge", "gt") if hasattr(m, key)}
    low = bounds.get("ge", bounds.get("gt", 0))
    if bool in kinds:
        value = st.booleans()
    elif int in kinds:
        value = st.integers(low, low + 300)
    elif float in kinds:
        value = st.floats(max(low, SMALLEST_FLOAT), low + 10.0)
    else:
        raise AssertionError(f"no strategy for an option of type {field.annotation!r}; teach option_values")
    return (st.none() | value) if type(None) in kinds else value


@st.composite
def method_choices(draw: st.DrawFn, registry: MethodRegistry) -> dict[str, Any]:
    """Any registered method of a kind, with any subset of its options set to valid values."""
    method = draw(st.sampled_from(registry.entries()))
    options = {
        name: draw(option_values(field))
        for name, field in method.options.model_fields.items()
        if name != "name" and draw(st.booleans())
    }
    return {"name": method.name, **options}


@st.composite
def plan_requests(draw: st.DrawFn) -> tuple[int, int, PlanConfig, bool]:
    """(E, teacher top-k, PlanConfig, expert weights given?) — sizes on both sides of every bound."""
    num_experts = draw(st.integers(1, 10))
    top_k = draw(st.integers(1, num_experts))
    sizes = st.none() | st.integers(1, num_experts + 2)
    config = PlanConfig(
        scoring=draw(method_choices(SCORERS)),
        num_selected=draw(sizes),
        grouping=draw(method_choices(GROUPERS)),
        scaling=draw(method_choices(SCALINGS)),
        num_groups=draw(sizes),
    )
    return num_experts, top_k, config, draw(st.booleans())


def refused_from_the_config(config: PlanConfig, num_experts: int, top_k: int, with_weights: bool) -> bool:
    try:
        validate_plan_config(config, num_experts, top_k)
    except PlanError:
        return True
    return GROUPERS.get(config.grouping.name).needs_weights and not with_weights


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
