"""`random` — seeded random selection [defined here]: the control the paper's ablations compare against.

    score_e ~ Uniform[0, 1), i.i.d., from a generator seeded by sha256("{seed}:{layer}")

so the top-K is a uniformly random K-subset, different per layer and reproducible from (seed, layer)
on any machine. Statistics are not read (beyond E and the layer index). A control, not a method to
compare: a sweep's default grid leaves it out.
"""

from __future__ import annotations

import hashlib

import torch

from moe2dense_core.registry import MethodOptions
from moe2dense_core.scoring.registry import register_scorer
from moe2dense_core.scoring.result import ScoreResult
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import ROUTER_ONLY


class RandomOptions(MethodOptions):
    seed: int = 0
    """Seed of the random selection (with the layer index, see the module docstring)."""


def layer_seed(seed: int, layer: int) -> int:
    """A 63-bit generator seed derived from (seed, layer), stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}:{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@register_scorer("random", RandomOptions, control=True, needs=ROUTER_ONLY)
def random_scores(stats: LayerStats, num_selected: int, options: RandomOptions) -> ScoreResult:
    """Uniform random scores [E] float64 (see module docstring)."""
    generator = torch.Generator().manual_seed(layer_seed(options.seed, stats.layer))
    return ScoreResult(scores=torch.rand(stats.num_experts, generator=generator, dtype=torch.float64))
