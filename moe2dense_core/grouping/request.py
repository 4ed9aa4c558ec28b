"""GroupingRequest: everything a grouper may read to split the K kept experts into k groups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.stats.layer_stats import LayerStats

ExpertWeightsFn = Callable[[int], ExpertWeights]
"""expert_weights(layer) -> the layer's E routed experts in canonical layout (needed by `weight_cluster`)."""


@dataclass(frozen=True)
class GroupingRequest:
    """One layer's grouping problem.

    stats: the layer's calibration statistics; ranked: the K kept expert indices by descending score,
    ties by lower index (scoring.rank_experts); num_groups: k, the number of dense blocks;
    expert_weights: weight access for weight-based groupers, else None.
    """

    stats: LayerStats
    ranked: list[int]
    num_groups: int
    expert_weights: ExpertWeightsFn | None = None
