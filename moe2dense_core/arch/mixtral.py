"""Mixtral (e.g. mistralai/Mixtral-8x7B-v0.1) → dense Mistral.

On disk (release): `model.layers.{i}.block_sparse_moe.gate.weight` [E, H] and
`model.layers.{i}.block_sparse_moe.experts.{e}.w1/w3/w2.weight` (w1 gate [I, H], w3 up [I, H], w2 down [H, I]);
transformers 5.24 renames `block_sparse_moe` → `mlp` and fuses the experts on load.
Routing [transformers MixtralTopKRouter]: p(t) = softmax(W_r x_t); top-k of p, ALWAYS renormalised.
Every layer is MoE; expert width is `intermediate_size`.

Dense target: `mistral` — attention, norms and embeddings are identical to Mixtral's in transformers
5.24 (same classes modulo the name, same tensor names). MistralConfig defaults `sliding_window` to 4096
where Mixtral's is None, so the dense config copies the teacher's value explicitly.
"""

from __future__ import annotations

from typing import Any

from moe2dense_core.arch.layouts import MLPLayout, PerExpertLayout
from moe2dense_core.arch.spec import ModuleNames, MoEArchSpec, register_spec


@register_spec
class MixtralSpec(MoEArchSpec):
    model_type = "mixtral"
    dense_model_type = "mistral"
    dense_architecture = "MistralForCausalLM"
    num_experts_keys = ("num_local_experts", "num_experts")
    expert_width_key = "intermediate_size"
    disk = ModuleNames(block="block_sparse_moe")
    disk_experts = PerExpertLayout(MLPLayout(("w1", "w3", "w2")))
    moe_config_fields = (
        "num_local_experts",
        "num_experts",
        "num_experts_per_tok",
        "output_router_logits",
        "router_aux_loss_coef",
        "router_jitter_noise",
    )

    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        return {**super().dense_config(config, ffn_width), "sliding_window": config.get("sliding_window")}
