"""Selection of the K kept experts from per-expert scores (METHOD.md pipeline step 2) [paper].

rank: all experts by descending score, ties broken by ascending expert index (deterministic).
top-K: the first K of that ranking, returned in ascending index order (a set).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe2dense_core.errors import PlanError


def rank_experts(scores: torch.Tensor, experts: Sequence[int] | None = None) -> list[int]:
    """Expert indices (all, or only `experts`) sorted by descending scores[e], ties by lower index.

    scores: [E] float64. Raises PlanError on NaN scores.
    """
    if bool(torch.isnan(scores).any()):
        raise PlanError(f"scores: NaN for experts {torch.nonzero(torch.isnan(scores)).flatten().tolist()}")
    candidates = sorted(range(scores.numel())) if experts is None else sorted(experts)
    values = scores[torch.as_tensor(candidates, dtype=torch.long)]
    order = torch.sort(values, descending=True, stable=True).indices
    return [candidates[i] for i in order.tolist()]


def select_top_k(scores: torch.Tensor, num_selected: int) -> list[int]:
    """The K = num_selected highest-scoring experts (ties: lower index wins), ascending; 1 ≤ K ≤ E is the
    caller's (plan.validate_plan_config), a larger K gives all E."""
    return sorted(rank_experts(scores)[:num_selected])
