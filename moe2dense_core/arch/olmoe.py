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

from moe2dense_core.arch.spec import MoEArchSpec, register_spec


@register_spec
class OlmoeSpec(MoEArchSpec):
    model_type = "olmoe"
    dense_model_type = "olmoe"
    expert_width_key = "intermediate_size"
    dense_ffn = "one_expert"
