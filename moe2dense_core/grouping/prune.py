"""`prune` — pure pruning [paper]: K = k, each kept expert its own group (the paper's best configs).

    groups = [[e] for e in ranked]     (rank order: descending score, ties by index)

Registered with merges=False, so plan.validate_plan_config requires K = k from the config alone.
"""

from __future__ import annotations

from moe2dense_core.grouping.registry import register_grouper
from moe2dense_core.grouping.request import GroupingRequest
from moe2dense_core.registry import MethodOptions
from moe2dense_core.stats.request import ROUTER_ONLY


@register_grouper("prune", merges=False, needs=ROUTER_ONLY)
def prune(request: GroupingRequest, options: MethodOptions) -> list[list[int]]:
    """One group per kept expert (see module docstring)."""
    return [[expert] for expert in request.ranked]
