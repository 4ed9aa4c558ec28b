"""`acp` — activation-weighted conditional probability [paper name; formula defined here].

    acp_e = cp_e · sqrt((1/N) Σ_t ‖f_e(x_t)‖²)      (Σ over ALL calibration tokens)
          = cp_e · sqrt(LayerStats.output_sq_norm_sums_e / N)

cp (Eq. 3) says how strongly the router trusts e when it picks it; the RMS output norm says how much
e moves the residual stream. `do_acp` uses acp as its per-expert quality a_e.
"""

from __future__ import annotations

import torch

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.cp import conditional_probability
from moe2dense_core.scoring.ratios import token_count
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import EXPERT_OUTPUTS


def activation_weighted_cp(stats: LayerStats) -> torch.Tensor:
    """acp [E] float64 (see module docstring)."""
    rms_output = torch.sqrt(stats.output_sq_norm_sums.clamp(min=0) / token_count(stats))
    return conditional_probability(stats) * rms_output


@register_scorer("acp", needs=EXPERT_OUTPUTS)
def acp(stats: LayerStats, num_selected: int, options: MethodOptions) -> ScoreResult:
    """The acp scorer: scores = acp."""
    return ScoreResult(scores=activation_weighted_cp(stats))
