"""Scale of the always-on shared experts in the dense FFN (not a method choice; fixed by the family).

    shared_scale = None                          the family has no shared experts (shared_width = 0)
                 = 1.0                           unweighted shared experts (DeepSeek) [paper, DeepSeek cards]
                 = (1/N) Σ_t sigmoid(g(x_t))     Qwen2-MoE's sigmoid-gated shared expert [defined here]:
                 = shared_gate_sum / N           the token-dependent gate replaced by its calibration mean

A family's shared experts are gated exactly when its MoEArchSpec declares a `modules.shared_gate`.
"""

from __future__ import annotations

from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.errors import PlanError
from moe2dense_core.stats.layer_stats import LayerStats


def has_shared_gate(spec: MoEArchSpec) -> bool:
    """Whether the family declares a shared-expert gate module (Qwen2-MoE)."""
    return spec.modules.shared_gate is not None


def shared_scale(spec: MoEArchSpec, shared_width: int, stats: LayerStats) -> float | None:
    """The LayerPlan.shared_scale of one layer (see module docstring)."""
    if shared_width == 0:
        return None
    if not has_shared_gate(spec):
        return 1.0
    num_tokens = float(stats.num_tokens)
    if not num_tokens > 0:
        raise PlanError(
            f"shared_scale: layer {stats.layer} has no calibration tokens (LayerStats.num_tokens = 0)"
        )
    return float(stats.shared_gate_sum) / num_tokens
