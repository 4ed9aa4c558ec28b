"""DeepSeek-V2 (e.g. deepseek-ai/DeepSeek-V2-Lite) → the same `deepseek_v2` type, every layer dense.

On disk: layers < first_k_dense_replace are dense, `model.layers.{i}.mlp.{gate,up,down}_proj.weight`
(width `intermediate_size`); later layers hold the router `mlp.gate.weight` [E, H], routed experts
`mlp.experts.{e}.{gate,up,down}_proj.weight` (width `moe_intermediate_size`) and the shared experts as ONE
MLP `mlp.shared_experts.{gate,up,down}_proj.weight` of width n_shared_experts · moe_intermediate_size,
always on and added unweighted. Attention is MLA (kv_lora_rank, q_lora_rank, rope/nope head dims).
Routing [transformers DeepseekV2TopkRouter]: p(t) = softmax(W_r x_t); top-k (`greedy`, or
`group_limited_greedy` over n_group groups), NOT renormalised, × routed_scaling_factor.
transformers 5.24 places MoE blocks at every layer ≥ first_k_dense_replace (it ignores moe_layer_freq,
so a config with moe_layer_freq ≠ 1 is refused).

Dense target [defined here]: no other transformers model has MLA attention, so the student stays
`deepseek_v2` with first_k_dense_replace = num_hidden_layers: every layer a `DeepseekV2MLP` of the one
uniform width `intermediate_size` = ffn_width. The teacher's leading dense layers (width intermediate_size)
and the converted MoE layers (k·I + shared width) may differ; assembly zero-pads the narrower ones, which
is exact (a zero gate/up row and a zero down column contribute silu(0)·0 = 0).
"""

from __future__ import annotations

from typing import Any

from moe2dense_core.arch.config_fields import optional_int, require_int
from moe2dense_core.arch.spec import ModuleNames, MoEArchSpec, register_spec
from moe2dense_core.errors import CheckpointError


class DeepseekMoESpec(MoEArchSpec):
    """What DeepSeek-V2 and V3 share: names, layer placement, shared experts, all-dense target."""

    num_experts_keys = ("n_routed_experts", "num_local_experts", "num_experts")
    modules = ModuleNames(shared="shared_experts")
    disk = ModuleNames(shared="shared_experts")

    def moe_layer_indices(self, config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
        if optional_int(config, "moe_layer_freq", 1, minimum=1) != 1:
            raise CheckpointError(
                f"config.json field 'moe_layer_freq' = {config['moe_layer_freq']}: transformers' {self.model_type} "
                "only supports 1 (every layer from first_k_dense_replace on is MoE)"
            )
        if config.get("mlp_bias"):
            raise CheckpointError(
                "config.json field 'mlp_bias' = true: expert MLPs with biases are not supported"
            )
        first_dense = optional_int(config, "first_k_dense_replace", 0, minimum=0)
        return tuple(range(min(first_dense, num_layers), num_layers))

    def shared_width(self, config: dict[str, Any]) -> int:
        return optional_int(config, "n_shared_experts", 0, minimum=0) * require_int(
            config, "moe_intermediate_size"
        )

    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        num_layers = self.dims(config).num_layers
        return {**super().dense_config(config, ffn_width), "first_k_dense_replace": num_layers}


@register_spec
class DeepseekV2Spec(DeepseekMoESpec):
    model_type = "deepseek_v2"
    dense_model_type = "deepseek_v2"
