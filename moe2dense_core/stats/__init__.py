"""Calibration statistics (METHOD.md step 1): float64 accumulators, hooks, collection.

    LayerStats / ExpertStats   layer_stats.py, expert_stats.py: the accumulators; update, merge, save/load
    StatsRequest               request.py: which statistics a pass collects (router always; outputs, Gram)
    attach_stat_hooks          hooks.py: context manager filling ExpertStats from a model's forwards
    HiddenStateStore           hidden_store.py: layer-by-layer hidden states, in RAM or spilled to disk
    collect_stats              collect.py: in-memory or layer-by-layer collection over token batches

`collect_stats` imports transformers; import it from `moe2dense_core` or `moe2dense_core.stats.collect`
so that using the accumulators alone stays cheap.
"""

from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.layer_stats import LayerStats, StatsError
from moe2dense_core.stats.request import EVERYTHING, EXPERT_OUTPUTS, ROUTER_ONLY, StatsRequest

__all__ = [
    "EVERYTHING",
    "EXPERT_OUTPUTS",
    "ROUTER_ONLY",
    "ExpertStats",
    "LayerStats",
    "StatsError",
    "StatsRequest",
]
