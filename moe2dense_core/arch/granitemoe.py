"""Granite MoE (ibm-granite/granite-3.0/3.1-*-a*m, `model_type` granitemoe) → dense Granite.

On disk (release, = what transformers 5.24 `save_pretrained` writes), experts FUSED:
    model.layers.{i}.block_sparse_moe.router.layer.weight   [E, H]      router, no bias
    model.layers.{i}.block_sparse_moe.input_linear.weight   [E, 2I, H]  gate = rows 0..I-1, up = rows I..2I-1
    model.layers.{i}.block_sparse_moe.output_linear.weight  [E, H, I]   down
In memory (transformers 5.24): `block_sparse_moe.router` (weight [E, H]) and `block_sparse_moe.experts`
(gate_up_proj [E, 2I, H], down_proj [E, H, I]); f_e(x) = down_e · (act(gate_e x) ⊙ up_e x), act =
ACT2FN[hidden_act] (silu in the releases; checked).
Routing [GraniteMoeTopKRouter]: z = W_r x (float32); top-k on z, then softmax over the k selected logits.
`router_probs` gives p(t) = softmax(z(t)) over all E: top-k of z = top-k of p, and p restricted to the
selected set and renormalised is exactly the applied weights. Every layer is MoE, no shared experts;
expert width is `intermediate_size`.

Dense target: `granite` (GraniteForCausalLM) — attention (scaled by attention_multiplier), norms,
embeddings (× embedding_multiplier), residual branches (× residual_multiplier) and logits
(÷ logits_scaling) are those of GraniteMoe in transformers 5.24, with the same tensor names; the dense
config keeps the four multipliers and tie_word_embeddings, its MLP is `mlp.{gate,up,down}_proj`.
"""

from __future__ import annotations

from moe2dense_core.arch.layouts import FusedLayout
from moe2dense_core.arch.spec import ModuleNames, MoEArchSpec, register_spec


@register_spec
class GraniteMoeSpec(MoEArchSpec):
    model_type = "granitemoe"
    dense_model_type = "granite"
    dense_architecture = "GraniteForCausalLM"
    num_experts_keys = ("num_local_experts",)
    expert_width_key = "intermediate_size"
    modules = ModuleNames(block="block_sparse_moe", router="router")
    disk = ModuleNames(block="block_sparse_moe", router="router.layer", experts="")
    disk_experts = FusedLayout(gate_up="input_linear.weight", down="output_linear.weight")
    moe_config_fields = (
        "num_local_experts",
        "num_experts_per_tok",
        "output_router_logits",
        "router_aux_loss_coef",
    )
