"""`pp` — pre-selection probability [paper name; formula defined here].

    pp_e = (1/N) Σ_t p_e(t)     (LayerStats.prob_sums / N)

The mean router probability of e before top-k, over all calibration tokens (p = the family's
router_probs: softmax over all E, or DeepSeek-V3's sigmoid scores without the selection bias).
"""

from __future__ import annotations

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.ratios import token_count
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import ROUTER_ONLY


@register_scorer("pp", needs=ROUTER_ONLY)
def pre_selection_probability(stats: LayerStats, num_selected: int, options: MethodOptions) -> ScoreResult:
    """pp scores [E] float64 (see module docstring)."""
    return ScoreResult(scores=stats.prob_sums / token_count(stats))
