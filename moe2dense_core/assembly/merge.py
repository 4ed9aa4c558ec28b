"""Score-weighted merging of a group of experts into one expert (METHOD.md step 3).

[paper] A group of one expert is copied; a larger group is merged by score-weighted averaging of its
members' weight matrices, the same weights for every matrix and bias:

    W_g = Σ_{e∈g} m_e W_e     for W ∈ {W_gate, W_up, W_down, b_gate, b_up, b_down},
    m_e = s_e / Σ_{e'∈g} s_{e'}   (the plan's `LayerPlan.merge_weights`, decided by the grouper).

Merging happens in float64 so that a one-expert group (m = [1.0]) reproduces its expert bit for bit
and the float64 identity tests hold to 1e-10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.errors import PlanError

MERGE_WEIGHT_SUM_TOLERANCE = 1e-6
"""How far Σ m_e may be from 1 before a group's merge weights are rejected as not an average."""


def merge_group(members: ExpertWeights, merge_weights: Sequence[float]) -> ExpertWeights:
    """One expert W_g = Σ_e m_e W_e from the group's E_g members.

    members: ExpertWeights with E_g experts (gate/up [E_g, I, H], down [E_g, H, I], biases [E_g, ·]);
    merge_weights: m [E_g], each ≥ 0, summing to 1.
    Returns ExpertWeights with E = 1 in float64 (gate/up [1, I, H], down [1, H, I]).
    Raises PlanError when the weights do not match the members or are not a convex combination.
    """
    weights = torch.as_tensor(list(merge_weights), dtype=torch.float64)
    if weights.numel() != members.num_experts:
        raise PlanError(
            f"merge_weights: {weights.numel()} weights for a group of {members.num_experts} experts"
        )
    if bool((weights < 0).any()) or abs(float(weights.sum()) - 1.0) > MERGE_WEIGHT_SUM_TOLERANCE:
        raise PlanError(f"merge_weights: {weights.tolist()} must be non-negative and sum to 1")
    members = members.to(torch.float64)
    if members.num_experts == 1 and float(weights[0]) == 1.0:  # a group of one is copied (no arithmetic)
        return members
    merged = {}
    for field in fields(members):
        tensor = getattr(members, field.name)
        merged[field.name] = None if tensor is None else torch.tensordot(weights, tensor, dims=1).unsqueeze(0)
    return ExpertWeights(**merged)
