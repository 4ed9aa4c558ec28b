"""`router_cluster` — clustering by router-probability profiles [defined here, MC-SMoE style].

Similarity of two experts = cosine of their router-probability profiles (p_i(t))_t over the N
calibration tokens:

    cos_ij = P_ij / sqrt(P_ii P_jj),   P_ij = Σ_t p_i(t) p_j(t)   (LayerStats.router_prob_gram; 0 if a norm is 0)

then seeded assignment (seeded_assignment.py): the k highest-scoring kept experts seed the groups,
every other kept expert joins its most similar seed; merged score-weighted.
"""

from __future__ import annotations

from moe2dense_core.grouping.registry import register_grouper
from moe2dense_core.grouping.request import GroupingRequest
from moe2dense_core.grouping.seeded_assignment import groups_by_gram
from moe2dense_core.registry import MethodOptions
from moe2dense_core.stats.request import ROUTER_ONLY


@register_grouper("router_cluster", needs=ROUTER_ONLY)
def router_cluster(request: GroupingRequest, options: MethodOptions) -> list[list[int]]:
    """Seeded groups by router-profile cosine similarity (see module docstring)."""
    return groups_by_gram(request.ranked, request.num_groups, request.stats.router_prob_gram)
