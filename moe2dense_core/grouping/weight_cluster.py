"""`weight_cluster` (WC) — clustering by expert weights [paper name; algorithm defined here].

Each expert is the flattened vector of [W_gate; W_up; W_downᵀ] ([3·I·H], biases not included);
similarity is the cosine of two such vectors, computed in float64 as a Gram matrix of Frobenius
inner products:

    W_ij = ⟨gate_i, gate_j⟩_F + ⟨up_i, up_j⟩_F + ⟨down_i, down_j⟩_F,   cos_ij = W_ij / sqrt(W_ii W_jj)

then seeded assignment (seeded_assignment.py): the k highest-scoring kept experts seed the groups,
every other kept expert joins its most similar seed; merged score-weighted.
Weights come from `request.expert_weights(layer)` (all E experts of the layer, canonical layout); the
registry refuses a request without them (`needs_weights`).
"""

from __future__ import annotations

import torch

from moe2dense_core.errors import PlanError
from moe2dense_core.grouping.registry import register_grouper
from moe2dense_core.grouping.request import GroupingRequest
from moe2dense_core.grouping.seeded_assignment import assign_to_seeds, cosine_from_gram
from moe2dense_core.registry import MethodOptions
from moe2dense_core.stats.request import ROUTER_ONLY


@register_grouper("weight_cluster", needs_weights=True, needs=ROUTER_ONLY)
def weight_cluster(request: GroupingRequest, options: MethodOptions) -> list[list[int]]:
    """Seeded groups by weight cosine similarity (see module docstring)."""
    layer = request.stats.layer
    weights = request.expert_weights(layer)
    if weights.num_experts != request.stats.num_experts:
        raise PlanError(
            f"expert_weights({layer}): {weights.num_experts} experts, but the statistics have "
            f"{request.stats.num_experts}"
        )
    kept = weights.select(request.ranked).to(torch.float64)
    gram = (
        torch.einsum("aih,bih->ab", kept.gate, kept.gate)
        + torch.einsum("aih,bih->ab", kept.up, kept.up)
        + torch.einsum("ahi,bhi->ab", kept.down, kept.down)
    )
    return assign_to_seeds(request.ranked, request.num_groups, cosine_from_gram(gram))
