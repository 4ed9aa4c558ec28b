"""The dense FFN of one student layer, built from streamed teacher weights and the layer's plan.

MoE layer (METHOD.md steps 3-5): read ONLY the K kept experts of the layer (spec.read_experts), merge
each group score-weighted (merge.py), concatenate the k group blocks scaled by c_g plus the shared
experts scaled by s (concatenate.py), zero-pad to the plan's uniform target width:

    dense_ℓ(x) = Σ_g c_g · f_g(x)  (+ s · f_shared(x)),    f_g = expert with W_g = Σ_{e∈g} m_e W_e
    [paper, Eq. 2 and the score-weighted merge of METHOD.md step 3].

Teacher dense layer (DeepSeek's first_k_dense_replace, Qwen's mlp_only_layers): its MLP unchanged,
zero-padded to the target width (exact), so every student layer has the same FFN width and the student
is a stock config [defined here].
"""

from __future__ import annotations

from typing import Any

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.assembly.concatenate import concatenate_blocks, pad_to_width
from moe2dense_core.assembly.merge import merge_group
from moe2dense_core.plan import LayerPlan


def moe_layer_ffn(spec: MoEArchSpec, reader: Any, layer_plan: LayerPlan, target_width: int) -> ExpertWeights:
    """Dense FFN (E = 1, float64, width `target_width`) replacing the MoE block of `layer_plan.layer`."""
    kept = list(layer_plan.kept)
    position = {expert: index for index, expert in enumerate(kept)}
    experts = spec.read_experts(reader, layer_plan.layer, kept).to(torch.float64)
    blocks = [
        merge_group(experts.select([position[e] for e in group]), weights)
        for group, weights in zip(layer_plan.groups, layer_plan.merge_weights, strict=True)
    ]
    return concatenate_blocks(
        blocks,
        layer_plan.scales,
        shared=spec.read_shared(reader, layer_plan.layer),
        shared_scale=layer_plan.shared_scale,
        target_width=target_width,
    )


def dense_layer_ffn(spec: MoEArchSpec, reader: Any, layer: int, target_width: int) -> ExpertWeights:
    """A teacher layer that is already dense: its MLP (E = 1, float64) zero-padded to `target_width`."""
    return pad_to_width(spec.read_dense_mlp(reader, layer).to(torch.float64), target_width)
