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

from moe2dense_core.arch.config_fields import require_int, sparse_step_moe_layers
from moe2dense_core.arch.spec import ModuleNames, MoEArchSpec, register_spec

BLOCK = ModuleNames(shared="shared_expert", shared_gate="shared_expert_gate")


@register_spec
class Qwen2MoeSpec(MoEArchSpec):
    model_type = "qwen2_moe"
    dense_model_type = "qwen2_moe"
    modules = BLOCK
    disk = BLOCK

    def moe_layer_indices(self, config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
        return sparse_step_moe_layers(config, num_layers)

    def shared_width(self, config: dict[str, Any]) -> int:
        return require_int(config, "shared_expert_intermediate_size")

    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        num_layers = self.dims(config).num_layers
        return {**super().dense_config(config, ffn_width), "mlp_only_layers": list(range(num_layers))}
