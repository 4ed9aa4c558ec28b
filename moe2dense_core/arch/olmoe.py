"""OLMoE (e.g. allenai/OLMoE-1B-7B-0924) → the same `olmoe` type with ONE expert, top-1.

On disk: `model.layers.{i}.mlp.gate.weight` [E, H], `model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight`.
Routing [transformers OlmoeTopKRouter]: p(t) = softmax(W_r x_t); top-k of p, renormalised iff
`norm_topk_prob` (false in the release). Every layer is MoE; expert width is `intermediate_size`.

Dense target [defined here]: transformers 5.24 has no dense model with OLMoE's attention (q/k RMSNorm over
the whole projection, optional clip_qkv), so the student stays `olmoe` with num_experts = 1 and top-1:
softmax over one logit is exactly 1, so its only expert — the dense FFN of width `ffn_width` — is applied
with weight 1 on every token. Its router weight [1, H] is written as zeros (any value gives the same).
"""

from __future__ import annotations

from typing import Any

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.fused_swiglu import FusedSwigluMoESpec
from moe2dense_core.arch.spec import register_spec


@register_spec
class OlmoeSpec(FusedSwigluMoESpec):
    model_type = "olmoe"
    dense_model_type = "olmoe"
    expert_width_key = "intermediate_size"

    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        self.dims(config)
        dense = {k: v for k, v in config.items() if k not in ("num_local_experts", "quantization_config")}
        dense.update(num_experts=1, num_experts_per_tok=1, intermediate_size=ffn_width)
        return dense

    def dense_ffn_tensors(self, layer: int, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """The one-expert MoE block: zero router [1, H] + expert 0 = the dense FFN (released per-expert names)."""
        if ffn.num_experts != 1 or any(b is not None for b in (ffn.gate_bias, ffn.up_bias, ffn.down_bias)):
            raise ValueError(f"{self.model_type}: dense FFN of layer {layer} must be one bias-free expert")
        gate, up, down = self.expert_tensor_names(layer, 0)
        return {
            self.router_tensor_names(layer)["weight"]: torch.zeros(1, ffn.hidden, dtype=ffn.gate.dtype),
            gate: ffn.gate[0],
            up: ffn.up[0],
            down: ffn.down[0],
        }
