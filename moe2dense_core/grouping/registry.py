"""Grouper registry: every grouping method under its METHOD.md name (moe2dense_core/registry.py).

A grouper is `fn(request: GroupingRequest, options) -> list[list[int]]`, `options` its MethodOptions
model: exactly k = request.num_groups non-empty, disjoint groups covering the K kept experts,
deterministic. Calling a registered grouper checks that contract, so a broken method fails loudly
instead of producing a wrong model. A grouper declares the statistics it reads (`needs`, a StatsRequest;
default everything); called on statistics that lack them it raises StatsError naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe2dense_core.errors import PlanError
from moe2dense_core.grouping.request import ExpertWeightsFn, GroupingRequest
from moe2dense_core.registry import Method, MethodOptions, MethodRegistry
from moe2dense_core.stats.request import EVERYTHING, StatsRequest


@dataclass(frozen=True)
class Grouper(Method):
    """A registered grouping method.

    merges: whether a group may hold several experts; a grouper that does not (`prune`) needs K = k,
        which plan.validate_plan_config checks from the config alone.
    needs_weights: the grouper reads expert weights (`weight_cluster`): request.expert_weights must be set.
    needs: the calibration statistics it reads.
    """

    merges: bool = True
    needs_weights: bool = False
    needs: StatsRequest = EVERYTHING

    def require_weights(self, expert_weights: ExpertWeightsFn | None) -> None:
        """PlanError when the grouper reads expert weights and none are given."""
        if self.needs_weights and expert_weights is None:
            raise PlanError(
                f"grouping {self.name!r} needs expert weights: pass build_plan(..., expert_weights=fn)"
            )

    def __call__(self, request: GroupingRequest, options: MethodOptions | None = None) -> list[list[int]]:
        """Validated groups; options default to the method's defaults."""
        self.require_weights(request.expert_weights)
        request.stats.collected.require(self.needs, f"grouping {self.name!r}")
        groups = self.fn(request, options or self.defaults())
        members = [e for group in groups for e in group]
        if (
            len(groups) != request.num_groups
            or any(not group for group in groups)
            or sorted(members) != sorted(request.ranked)
        ):
            raise PlanError(
                f"grouping {self.name!r} on layer {request.stats.layer}: {groups} is not {request.num_groups} "
                f"non-empty groups partitioning the kept experts {sorted(request.ranked)}"
            )
        return groups


GROUPERS: MethodRegistry[Grouper] = MethodRegistry("grouping", "grouper", PlanError, Grouper)
register_grouper = GROUPERS.register
get_grouper = GROUPERS.get
grouper_names = GROUPERS.names
