"""`prune` — pure pruning [paper]: K = k, each kept expert its own group (the paper's best configs).

    groups = [[e] for e in ranked]     (rank order: descending score, ties by index)

Requires K = k (validated from the config alone by plan.validate_plan_config).
"""

from __future__ import annotations

from moe2dense_core.errors import PlanError
from moe2dense_core.grouping.registry import register_grouper
from moe2dense_core.grouping.request import GroupingRequest


@register_grouper("prune")
def prune(request: GroupingRequest) -> list[list[int]]:
    """One group per kept expert (see module docstring)."""
    if len(request.ranked) != request.num_groups:
        raise PlanError(
            f"grouping 'prune' keeps every expert unmerged, so num_selected ({len(request.ranked)}) "
            f"must equal the number of groups ({request.num_groups})"
        )
    return [[expert] for expert in request.ranked]
