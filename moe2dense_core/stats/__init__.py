"""Calibration statistics (METHOD.md step 1): float64 accumulators, hooks, collection.

    LayerStats / ExpertStats   layer_stats.py, expert_stats.py: the accumulators; update, merge, save/load
    attach_stat_hooks          hooks.py: context manager filling ExpertStats from a model's forwards
    collect_stats              collect.py: in-memory or layer-by-layer collection over token batches

`collect_stats` imports transformers; import it from `moe2dense_core` or `moe2dense_core.stats.collect`
so that using the accumulators alone stays cheap.
"""

from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.layer_stats import LayerStats, StatsError

__all__ = ["ExpertStats", "LayerStats", "StatsError"]
