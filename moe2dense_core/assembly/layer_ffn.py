"""The dense FFN of one student layer, built from streamed teacher weights and the layer's plan.

MoE layer (METHOD.md steps 3-5): read ONLY the K kept experts of the layer (spec.read_experts), one group
at a time, merge each group score-weighted (merge.py), concatenate the k group blocks scaled by c_g plus
the shared experts scaled by s (concatenate.py), zero-padded to the plan's uniform target width:

    dense_ℓ(x) = Σ_g c_g · f_g(x)  (+ s · f_shared(x)),    f_g = expert with W_g = Σ_{e∈g} m_e W_e
    [paper, Eq. 2 and the score-weighted merge of METHOD.md step 3].

Teacher dense layer (DeepSeek's first_k_dense_replace, Qwen's mlp_only_layers): its MLP unchanged,
zero-padded to the target width (exact), so every student layer has the same FFN width and the student
is a stock config [defined here].

Arithmetic is float64; `dtype` is only how the result is stored (each value rounded once). Memory: the
result [W] in `dtype`, the shared experts, and one group's members (mapped pages, float32 and float64)
with its merged block (float64): the reader's maps are released after each group is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.assembly.concatenate import concatenate_blocks
from moe2dense_core.assembly.merge import merge_group
from moe2dense_core.plan import LayerPlan


def moe_layer_ffn(
    spec: MoEArchSpec,
    reader: Any,
    layer_plan: LayerPlan,
    target_width: int,
    dtype: torch.dtype = torch.float64,
) -> ExpertWeights:
    """Dense FFN (E = 1, width `target_width`, stored in `dtype`) replacing the MoE block of `layer_plan.layer`."""

    def merged_groups() -> Iterator[ExpertWeights]:
        for group, weights in zip(layer_plan.groups, layer_plan.merge_weights, strict=True):
            members = spec.read_experts(reader, layer_plan.layer, list(group))
            reader.release_mapped()  # the group's mapped pages last no longer than its members
            yield merge_group(members, weights)

    return concatenate_blocks(
        merged_groups(),
        layer_plan.scales,
        shared=spec.read_shared(reader, layer_plan.layer),
        shared_scale=layer_plan.shared_scale,
        target_width=target_width,
        dtype=dtype,
    )


def dense_layer_ffn(
    spec: MoEArchSpec, reader: Any, layer: int, target_width: int, dtype: torch.dtype = torch.float64
) -> ExpertWeights:
    """A teacher layer that is already dense: its MLP (E = 1) zero-padded to `target_width`, in `dtype`."""
    return concatenate_blocks(
        [spec.read_dense_mlp(reader, layer)], [1.0], target_width=target_width, dtype=dtype
    )
