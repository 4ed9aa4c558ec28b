"""`proportional` down-projection scaling [paper, App. H; formula defined here from the DeepSeek cards].

    c_g = Σ_{e∈g} Σ_t w_e(t) / Σ_{e∈g} n_e = Σ_{e∈g} weight_sums_e / Σ_{e∈g} counts_e

the mean applied routing weight of the group's experts on the tokens that chose them.
Zero-count fallback [defined here]: a group none of whose experts was ever selected gets the layer's
mean applied weight per selection, Σ_e weight_sums_e / Σ_e counts_e; if no expert of the layer was
ever selected (no calibration tokens), c_g = 1/k as in `uniform`.
"""

from __future__ import annotations

import torch

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scaling.registry import register_scaling
from moe2dense_core.stats.layer_stats import LayerStats


@register_scaling("proportional")
def proportional(stats: LayerStats, groups: list[list[int]], options: MethodOptions) -> list[float]:
    """c_g per group (see module docstring)."""
    total_count = float(stats.counts.sum())
    fallback = float(stats.weight_sums.sum()) / total_count if total_count > 0 else 1.0 / len(groups)
    scales = []
    for group in groups:
        members = torch.as_tensor(group, dtype=torch.long)
        count = float(stats.counts[members].sum())
        scales.append(float(stats.weight_sums[members].sum()) / count if count > 0 else fallback)
    return scales
