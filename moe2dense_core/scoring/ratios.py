"""Small exact helpers the scorers share: token count N and 0-guarded per-expert ratios."""

from __future__ import annotations

import torch

from moe2dense_core.errors import PlanError
from moe2dense_core.stats.layer_stats import LayerStats


def token_count(stats: LayerStats) -> float:
    """N, the number of calibration tokens of the layer; PlanError when there are none."""
    n = float(stats.num_tokens)
    if not n > 0:
        raise PlanError(
            f"LayerStats.num_tokens of layer {stats.layer} is {n}: no calibration tokens to score on"
        )
    return n


def ratio_or_zero(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator elementwise [E], 0 where denominator is 0 (an expert never selected)."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))
