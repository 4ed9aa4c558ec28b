"""`score_balanced` — score-balanced dealing [defined here].

Experts in rank order (descending score, ties by index) are dealt to the k groups in serpentine
round-robin order 0, 1, …, k−1, k−1, …, 1, 0, 0, 1, … :

    group(r) = r mod k            if ⌊r / k⌋ is even
             = k − 1 − (r mod k)  otherwise            (r = rank position, 0-based)

so every group gets one expert per round and the score mass evens out (plain round-robin would
give group 0 the best expert of every round). Each group is merged score-weighted.
"""

from __future__ import annotations

from moe2dense_core.grouping.registry import register_grouper
from moe2dense_core.grouping.request import GroupingRequest
from moe2dense_core.registry import MethodOptions
from moe2dense_core.stats.request import ROUTER_ONLY


@register_grouper("score_balanced", needs=ROUTER_ONLY)
def score_balanced(request: GroupingRequest, options: MethodOptions) -> list[list[int]]:
    """Serpentine dealing of the ranked experts into k groups (see module docstring)."""
    k = request.num_groups
    groups: list[list[int]] = [[] for _ in range(k)]
    for position, expert in enumerate(request.ranked):
        round_index, offset = divmod(position, k)
        groups[offset if round_index % 2 == 0 else k - 1 - offset].append(expert)
    return groups
