"""`ean` — expert activation norm [defined here, from prior work (REAP's baselines)].

    ean_e = Σ_{t: e∈T(t)} ‖f_e(x_t)‖ / n_e     (LayerStats.routed_norm_sums / counts; 0 if n_e = 0)

The mean output norm of expert e over the tokens routed to it.
"""

from __future__ import annotations

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.ratios import ratio_or_zero
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import EXPERT_OUTPUTS


@register_scorer("ean", needs=EXPERT_OUTPUTS)
def expert_activation_norm(stats: LayerStats, num_selected: int, options: MethodOptions) -> ScoreResult:
    """ean scores [E] float64 (see module docstring)."""
    return ScoreResult(scores=ratio_or_zero(stats.routed_norm_sums, stats.counts))
