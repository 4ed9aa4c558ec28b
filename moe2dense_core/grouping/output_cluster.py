"""`output_cluster` — clustering by expert outputs [defined here, HC-SMoE style].

Similarity of two experts = cosine of their outputs over all N calibration tokens:

    cos_ij = G_ij / sqrt(G_ii G_jj),   G_ij = Σ_t ⟨f_i(x_t), f_j(x_t)⟩   (LayerStats.gram; 0 if a norm is 0)

then seeded assignment (seeded_assignment.py): the k highest-scoring kept experts seed the groups,
every other kept expert joins its most similar seed; merged score-weighted.
"""

from __future__ import annotations

from moe2dense_core.grouping.registry import register_grouper
from moe2dense_core.grouping.request import GroupingRequest
from moe2dense_core.grouping.seeded_assignment import groups_by_gram
from moe2dense_core.registry import MethodOptions
from moe2dense_core.stats.request import EVERYTHING


@register_grouper("output_cluster", needs=EVERYTHING)
def output_cluster(request: GroupingRequest, options: MethodOptions) -> list[list[int]]:
    """Seeded groups by output cosine similarity (see module docstring)."""
    return groups_by_gram(request.ranked, request.num_groups, request.stats.gram)
