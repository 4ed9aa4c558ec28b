"""Qwen2-MoE (e.g. Qwen/Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) → the same `qwen2_moe` type, every layer dense.

On disk: `model.layers.{i}.mlp.gate.weight` [E, H], `mlp.experts.{e}.{gate,up,down}_proj.weight` (width
`moe_intermediate_size`), shared expert `mlp.shared_expert.{gate,up,down}_proj.weight` (width
`shared_expert_intermediate_size`) and its gate `mlp.shared_expert_gate.weight` [1, H].
Block output [transformers Qwen2MoeSparseMoeBlock]:
    y = Σ_{e∈T(t)} w_e(t) f_e(x) + sigmoid(g·x) · f_shared(x),
with p(t) = softmax(W_r x_t), top-k of p renormalised iff `norm_topk_prob` (false in the releases).
The shared gate sigmoid(g·x) is token dependent; `shared_gate_module` exposes it so statistics can record
its mean, which assembly folds into the dense FFN as a constant.

Dense target [defined here]: Qwen2's attention equals Qwen2-MoE's only when `qkv_bias` is true (Qwen2
always has q/k/v biases) and their sliding-window rules differ, so the student stays `qwen2_moe` with
`mlp_only_layers` = every layer: each decoder layer then holds a plain `Qwen2MoeMLP` of width
`intermediate_size` = ffn_width (tensor names `mlp.{gate,up,down}_proj.weight`), exact for every config.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from moe2dense_core.arch.config_fields import require_int
from moe2dense_core.arch.fused_swiglu import FusedSwigluMoESpec, sparse_step_moe_layers
from moe2dense_core.arch.spec import register_spec


@register_spec
class Qwen2MoeSpec(FusedSwigluMoESpec):
    model_type = "qwen2_moe"
    dense_model_type = "qwen2_moe"
    shared_block = "shared_expert"

    def moe_layer_indices(self, config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
        return sparse_step_moe_layers(config, num_layers)

    def shared_width(self, config: dict[str, Any]) -> int:
        return require_int(config, "shared_expert_intermediate_size")

    def shared_gate_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.moe_block(model, layer).shared_expert_gate

    def shared_gate_tensor_name(self, layer: int) -> str:
        """On-disk weight [1, H] of the shared expert's sigmoid gate."""
        return f"{self.block_prefix(layer)}shared_expert_gate.weight"

    def shared_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        return [*super().shared_tensor_names(config, layer), self.shared_gate_tensor_name(layer)]

    def expected_shapes(self, config: dict[str, Any], layer: int) -> dict[str, tuple[int, ...]]:
        shapes = super().expected_shapes(config, layer)
        dims = self.dims(config)
        if layer in dims.moe_layers:
            shapes[self.shared_gate_tensor_name(layer)] = (1, dims.hidden)
        return shapes

    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        num_layers = self.dims(config).num_layers
        dense = {k: v for k, v in config.items() if k != "quantization_config"}  # the student is unquantised
        dense.update(mlp_only_layers=list(range(num_layers)), intermediate_size=ffn_width)
        return dense
