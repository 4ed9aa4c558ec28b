"""DeepSeek-V3 (and R1, same config) → the same `deepseek_v3` type, every layer dense.

Layout as DeepSeek-V2 (see deepseek_v2.py), plus the router's selection bias
`model.layers.{i}.mlp.gate.e_score_correction_bias` [E] (a router tensor: `router_tensors`).
Routing [transformers DeepseekV3TopkRouter, `noaux_tc`]: s(t) = sigmoid(W_r x_t) [E]; selection on
s + b_corr, group-limited (n_group groups scored by the sum of their top-2 biased scores, keep
topk_group groups, then top-k experts inside them); applied weights are the UNBIASED s of the selected
experts, renormalised iff norm_topk_prob, × routed_scaling_factor (2.5 in the release).
`router_probs` returns p(t) = s(t) (sigmoid, without the selection bias): the per-expert affinity the
`pp`/`cp` scorers average. Note Σ_e p_e(t) ≠ 1 here.

Dense target [defined here]: `deepseek_v3` with first_k_dense_replace = num_hidden_layers (MLA attention
has no other home in transformers); see deepseek_v2.py for the uniform width.
"""

from __future__ import annotations

import torch

from moe2dense_core.arch.deepseek_v2 import DeepseekMoESpec
from moe2dense_core.arch.spec import register_spec


@register_spec
class DeepseekV3Spec(DeepseekMoESpec):
    model_type = "deepseek_v3"
    dense_model_type = "deepseek_v3"
    router_tensors = ("weight", "e_score_correction_bias")

    def router_probs(self, router_logits: torch.Tensor) -> torch.Tensor:
        """p(t) = sigmoid(z(t)) [T, E] in float64 (no correction bias, no renormalisation)."""
        return torch.sigmoid(router_logits.double())
