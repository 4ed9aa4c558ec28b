"""`reap` — router-weighted expert activation norm [defined here, from REAP].

    reap_e = Σ_{t: e∈T(t)} w_e(t)·‖f_e(x_t)‖ / n_e
           (LayerStats.routed_weighted_norm_sums / counts; 0 if n_e = 0)

w_e(t) is the applied routing weight (after renormalisation and routed scaling), so an expert
scores high when it both contributes strongly to the output and is weighted strongly by the router.
"""

from __future__ import annotations

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.ratios import ratio_or_zero
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import EXPERT_OUTPUTS


@register_scorer("reap", needs=EXPERT_OUTPUTS)
def router_weighted_activation_norm(
    stats: LayerStats, num_selected: int, options: MethodOptions
) -> ScoreResult:
    """reap scores [E] float64 (see module docstring)."""
    return ScoreResult(scores=ratio_or_zero(stats.routed_weighted_norm_sums, stats.counts))
