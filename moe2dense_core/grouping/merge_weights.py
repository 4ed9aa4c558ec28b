"""Score-weighted merge weights of each group (METHOD.md step 3).

[paper]   m_e = s_e / Σ_{e'∈g} s_{e'}   for e ∈ g   (s = the scorer's per-expert scores)
[defined here] guard: negative scores count as 0, m_e = max(s_e, 0) / Σ max(s_e', 0); when that sum is
0 (e.g. no member was ever selected, so cp/ean/reap are 0) the group is averaged uniformly, m_e = 1/|g|.
A group of one always gets [1.0] (the expert is copied). Weights are ≥ 0 and sum to 1.
"""

from __future__ import annotations

import torch


def score_weighted(groups: list[list[int]], scores: torch.Tensor) -> list[list[float]]:
    """Per group, the merge weights of its members in group order. scores: [E] float64."""
    weights = []
    for group in groups:
        member_scores = scores[torch.as_tensor(group, dtype=torch.long)].clamp(min=0)
        total = float(member_scores.sum())
        if len(group) == 1:
            weights.append([1.0])
        elif total > 0:
            weights.append((member_scores / total).tolist())
        else:
            weights.append([1.0 / len(group)] * len(group))
    return weights
