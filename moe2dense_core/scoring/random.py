"""`random` — seeded random selection [defined here]: the control the paper's ablations compare against.

    score_e ~ Uniform[0, 1), i.i.d., from a generator seeded by sha256("{seed}:{layer}")

so the top-K is a uniformly random K-subset, different per layer and reproducible from (seed, layer)
on any machine. Statistics are not read (beyond E and the layer index).
"""

from __future__ import annotations

import hashlib

import torch

from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.stats.layer_stats import LayerStats


def layer_seed(seed: int, layer: int) -> int:
    """A 63-bit generator seed derived from (seed, layer), stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}:{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@register_scorer("random", options={"seed": "seed"})
def random_scores(stats: LayerStats, *, seed: int = 0) -> torch.Tensor:
    """Uniform random scores [E] float64 (see module docstring)."""
    generator = torch.Generator().manual_seed(layer_seed(seed, stats.layer))
    return torch.rand(stats.num_experts, generator=generator, dtype=torch.float64)
