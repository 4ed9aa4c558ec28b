"""Qwen3-MoE (e.g. Qwen/Qwen3-30B-A3B) → dense Qwen3.

Routing [transformers Qwen3MoeTopKRouter]: p(t) = softmax(W_r x_t) over all E; the top-k of p are
applied, renormalised to sum 1 iff `norm_topk_prob` (true in the release). No shared expert.
Layer placement: MoE unless in `mlp_only_layers` or (i+1) % decoder_sparse_step ≠ 0 (then a dense
`Qwen3MoeMLP` of width `intermediate_size`). Names: the MoEArchSpec defaults (`mlp.gate`, per-expert
`mlp.experts.{e}.{gate,up,down}_proj` on disk).

Dense target: `qwen3` — its attention (q/k RMSNorm on the head dim, RoPE, GQA, o_proj) and its norms
and embeddings are identical to Qwen3-MoE's in transformers 5.24 (same tensor names and shapes). The one
difference is the sliding window: Qwen3-MoE applies `sliding_window` (when `use_sliding_window`) to
every layer, Qwen3 only to layers ≥ max_window_layers, so the dense config writes `layer_types`
explicitly to keep the attention pattern the same.
"""

from __future__ import annotations

from typing import Any

from moe2dense_core.arch.config_fields import sparse_step_moe_layers
from moe2dense_core.arch.spec import MoEArchSpec, register_spec


@register_spec
class Qwen3MoeSpec(MoEArchSpec):
    model_type = "qwen3_moe"
    dense_model_type = "qwen3"
    dense_architecture = "Qwen3ForCausalLM"
    moe_config_fields = (
        "num_experts",
        "num_local_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "norm_topk_prob",
        "decoder_sparse_step",
        "mlp_only_layers",
        "output_router_logits",
        "router_aux_loss_coef",
    )

    def moe_layer_indices(self, config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
        return sparse_step_moe_layers(config, num_layers)

    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        num_layers = self.dims(config).num_layers
        sliding = bool(config.get("use_sliding_window")) and config.get("sliding_window") is not None
        return {
            **super().dense_config(config, ffn_width),
            "layer_types": ["sliding_attention" if sliding else "full_attention"] * num_layers,
            "max_window_layers": 0 if sliding else num_layers,
        }
