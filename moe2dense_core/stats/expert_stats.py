"""ExpertStats: the calibration statistics of a whole model, one LayerStats per MoE layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from moe2dense_core.stats.layer_stats import LayerStats


@dataclass
class ExpertStats:
    """Per-layer float64 accumulators of one teacher.

    config: the teacher's config.json (dict); model_type: its `config.model_type`;
    layers: MoE layer index → LayerStats.
    """

    config: dict
    model_type: str
    num_experts: int
    top_k: int
    layers: dict[int, LayerStats] = field(default_factory=dict)
