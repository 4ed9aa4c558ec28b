"""`uniform` down-projection scaling [paper default, §3.4]; option `router_mass` [defined here].

    c_g = 1/k                                   for every group g (k = number of groups)
    c_g = (1/k) · (1/N) Σ_t Σ_e w_e(t)          with router_mass = True
        = (1/k) · Σ_e weight_sums_e / N

1/k is exact in expectation for routers that renormalise the top-k weights to sum 1. The mean
applied routing mass corrects routers that do not (DeepSeek, OLMoE with norm_topk_prob=false) or
that multiply by a routed scaling factor.
"""

from __future__ import annotations

from moe2dense_core.errors import PlanError
from moe2dense_core.registry import MethodOptions
from moe2dense_core.scaling.registry import register_scaling
from moe2dense_core.stats.layer_stats import LayerStats


def mean_routing_mass(stats: LayerStats) -> float:
    """(1/N) Σ_t Σ_e w_e(t): the mean total applied routing weight per token."""
    num_tokens = float(stats.num_tokens)
    if not num_tokens > 0:
        raise PlanError(
            f"router_mass: layer {stats.layer} has no calibration tokens (LayerStats.num_tokens = 0)"
        )
    return float(stats.weight_sums.sum()) / num_tokens


class UniformOptions(MethodOptions):
    router_mass: bool = False
    """Multiply 1/k by the mean applied routing mass [defined here] (see the module docstring)."""


@register_scaling("uniform", UniformOptions)
def uniform(stats: LayerStats, groups: list[list[int]], options: UniformOptions) -> list[float]:
    """c_g per group (see module docstring)."""
    scale = 1.0 / len(groups)
    if options.router_mass:
        scale *= mean_routing_mass(stats)
    return [scale] * len(groups)
