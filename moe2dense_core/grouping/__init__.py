"""Grouping methods (METHOD.md "Grouping"): each registered under its METHOD.md name on import.

from moe2dense_core.grouping import GroupingRequest, get_grouper
groups = get_grouper("output_cluster")(GroupingRequest(layer_stats, ranked, num_groups=k))
"""

from moe2dense_core.grouping import (  # noqa: F401  (registration)
    output_cluster,
    prune,
    router_cluster,
    score_balanced,
    weight_cluster,
)
from moe2dense_core.grouping.merge_weights import score_weighted
from moe2dense_core.grouping.registry import GROUPERS, Grouper, get_grouper, grouper_names, register_grouper
from moe2dense_core.grouping.request import ExpertWeightsFn, GroupingRequest

__all__ = [
    "GROUPERS",
    "ExpertWeightsFn",
    "Grouper",
    "GroupingRequest",
    "get_grouper",
    "grouper_names",
    "register_grouper",
    "score_weighted",
]
