"""LayerStats: the float64 calibration accumulators of one MoE layer (METHOD.md step 1).

Notation: N calibration tokens; p(t) [E] router probabilities over all experts (spec.router_probs);
T(t) the teacher's selected top-k set; w_e(t) the applied routing weight (0 if e ∉ T(t));
f_e(x_t) [H] the output of expert e on token t — EVERY expert is run on EVERY token.

Field                      shape   accumulates
num_tokens                 []      N
counts                     [E]     n_e = Σ_t 1[e ∈ T(t)]
prob_sums                  [E]     Σ_t p_e(t)
prob_sums_selected         [E]     Σ_t p_e(t) · 1[e ∈ T(t)]
weight_sums                [E]     Σ_t w_e(t)
output_sq_norm_sums        [E]     Σ_t ‖f_e(x_t)‖²                      (all tokens)
gram                       [E, E]  G_ij = Σ_t ⟨f_i(x_t), f_j(x_t)⟩     (all tokens; diag = output_sq_norm_sums)
routed_norm_sums           [E]     Σ_{t: e∈T(t)} ‖f_e(x_t)‖
routed_weighted_norm_sums  [E]     Σ_{t: e∈T(t)} w_e(t) · ‖f_e(x_t)‖
router_prob_gram           [E, E]  P_ij = Σ_t p_i(t) · p_j(t)           (router-probability profiles)
shared_gate_sum            []      Σ_t sigmoid(shared_expert_gate(x_t)) (Qwen2-MoE; 0 elsewhere)

All fields are sums, so statistics of two disjoint token sets merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SUM_FIELDS = (
    "num_tokens",
    "counts",
    "prob_sums",
    "prob_sums_selected",
    "weight_sums",
    "output_sq_norm_sums",
    "gram",
    "routed_norm_sums",
    "routed_weighted_norm_sums",
    "router_prob_gram",
    "shared_gate_sum",
)


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float64)


@dataclass
class LayerStats:
    """Accumulators of one MoE layer with E experts, top-k routing (see module docstring)."""

    layer: int
    num_experts: int
    top_k: int
    num_tokens: torch.Tensor = field(default=None)  # type: ignore[assignment]
    counts: torch.Tensor = field(default=None)  # type: ignore[assignment]
    prob_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    prob_sums_selected: torch.Tensor = field(default=None)  # type: ignore[assignment]
    weight_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    output_sq_norm_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    gram: torch.Tensor = field(default=None)  # type: ignore[assignment]
    routed_norm_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    routed_weighted_norm_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    router_prob_gram: torch.Tensor = field(default=None)  # type: ignore[assignment]
    shared_gate_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        e = self.num_experts
        shapes = {
            "num_tokens": (),
            "counts": (e,),
            "prob_sums": (e,),
            "prob_sums_selected": (e,),
            "weight_sums": (e,),
            "output_sq_norm_sums": (e,),
            "gram": (e, e),
            "routed_norm_sums": (e,),
            "routed_weighted_norm_sums": (e,),
            "router_prob_gram": (e, e),
            "shared_gate_sum": (),
        }
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, _zeros(*shape))
            elif tuple(value.shape) != shape:
                raise ValueError(f"LayerStats.{name} of layer {self.layer}: shape {tuple(value.shape)}, expected {shape}")
            else:
                setattr(self, name, value.to(torch.float64))
