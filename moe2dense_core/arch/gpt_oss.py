"""GPT-OSS (openai/gpt-oss-20b, -120b) → the same `gpt_oss` type with ONE expert, top-1 (as the paper ships it).

On disk, released (MXFP4, config has quantization_config.quant_method = "mxfp4"):
    model.layers.{i}.mlp.router.weight [E, H], .bias [E]                                 (bf16)
    model.layers.{i}.mlp.experts.gate_up_proj_blocks U8 [E, 2I, H/32, 16], _scales U8 [E, 2I, H/32]
    model.layers.{i}.mlp.experts.gate_up_proj_bias [E, 2I]
    model.layers.{i}.mlp.experts.down_proj_blocks U8 [E, H, I/32, 16],  _scales U8 [E, H, I/32]
    model.layers.{i}.mlp.experts.down_proj_bias [E, H]
  rows of gate_up are INTERLEAVED: even rows gate, odd rows up (the same for the bias).
On disk, unquantised (what `save_pretrained` writes for a bf16/fp32 model), = in memory:
    gate_up_proj [E, H, 2I] (interleaved columns), gate_up_proj_bias [E, 2I], down_proj [E, I, H], down_proj_bias [E, H].
Expert [transformers GptOssExperts]: g, u = (x W_gu + b_gu)[0::2], [1::2];
    f_e(x) = ((clamp(u, ±7) + 1) · min(g, 7) · sigmoid(1.702 · min(g, 7))) W_d + b_d   (clamped SwiGLU,
    alpha and limit from config `swiglu_alpha`, `swiglu_limit`: only the released 1.702 and 7 are accepted).
Routing [GptOssTopKRouter]: z = W_r x + b_r; top-k on z, then softmax over the k selected logits.
`router_probs` gives p(t) = softmax(z(t)) over all E [defined here: the distribution whose restriction to
the selected set, renormalised, is exactly the applied weights].

Dense target [paper]: `gpt_oss` with num_local_experts = 1 and top-1 (softmax over one logit is 1), experts
kept unquantised (quantization_config dropped), biases and clamped SwiGLU kept; the single expert's
gate/up are re-interleaved into gate_up_proj.
"""

from __future__ import annotations

from dataclasses import replace

from moe2dense_core.arch.expert_weights import Activation
from moe2dense_core.arch.layouts import FusedLayout
from moe2dense_core.arch.spec import ModuleNames, MoEArchSpec, register_spec

EXPERTS = FusedLayout(
    gate_up="gate_up_proj",
    down="down_proj",
    order="in_out",
    gate_up_split="interleaved",
    gate_up_bias="gate_up_proj_bias",
    down_bias="down_proj_bias",
)


@register_spec
class GptOssSpec(MoEArchSpec):
    model_type = "gpt_oss"
    dense_model_type = "gpt_oss"
    activation = Activation("clamped_swiglu", alpha=1.702, limit=7.0)
    num_experts_keys = ("num_local_experts", "num_experts")
    top_k_keys = ("num_experts_per_tok", "experts_per_token")
    expert_width_key = "intermediate_size"
    modules = ModuleNames(router="router")
    module_experts = EXPERTS
    disk = ModuleNames(router="router")
    disk_experts = replace(EXPERTS, mxfp4=True)  # the release stores both matrices as MXFP4
    router_tensors = ("weight", "bias")
    dense_ffn = "one_expert"
