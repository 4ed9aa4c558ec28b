"""`sf` — selection frequency [paper].

    sf_e = n_e / N,   n_e = Σ_t 1[e ∈ T(t)]   (LayerStats.counts), N calibration tokens.

The fraction of tokens whose top-k set contains expert e.
"""

from __future__ import annotations

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.ratios import token_count
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import ROUTER_ONLY


@register_scorer("sf", needs=ROUTER_ONLY)
def selection_frequency(stats: LayerStats, num_selected: int, options: MethodOptions) -> ScoreResult:
    """sf scores [E] float64 (see module docstring)."""
    return ScoreResult(scores=stats.counts / token_count(stats))
