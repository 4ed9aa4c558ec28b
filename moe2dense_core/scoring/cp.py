"""`cp` — conditional probability [paper, Eq. 3].

    cp_e = Σ_t p_e(t)·1[e ∈ T(t)] / n_e     (LayerStats.prob_sums_selected / counts; 0 if n_e = 0)

The mean un-renormalised router probability of e on the tokens that chose e.
"""

from __future__ import annotations

import torch

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.ratios import ratio_or_zero
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import ROUTER_ONLY


def conditional_probability(stats: LayerStats) -> torch.Tensor:
    """cp [E] float64 (see module docstring)."""
    return ratio_or_zero(stats.prob_sums_selected, stats.counts)


@register_scorer("cp", needs=ROUTER_ONLY)
def cp(stats: LayerStats, num_selected: int, options: MethodOptions) -> ScoreResult:
    """The cp scorer: scores = cp."""
    return ScoreResult(scores=conditional_probability(stats))
