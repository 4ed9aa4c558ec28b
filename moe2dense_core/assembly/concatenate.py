"""Concatenate k expert blocks (+ shared experts) into one dense FFN, with down-projection scaling.

[paper, Eq. 2; METHOD.md steps 4-5] Given k group experts f_g (after merging), each of width I,

    W_gate = [W_gate,1; …; W_gate,k; W_gate,shared]                 [k·I (+ I_s), H]   (rows stacked)
    W_up   = [W_up,1;   …; W_up,k;   W_up,shared]                   [k·I (+ I_s), H]
    W_down = [c_1 W_down,1, …, c_k W_down,k, s W_down,shared]       [H, k·I (+ I_s)]   (columns stacked)
    b_gate, b_up stacked like their matrices;  b_down = Σ_g c_g b_down,g (+ s b_down,shared)

and, because act(·,·) is elementwise in the intermediate dimension, the dense FFN satisfies exactly

    dense(x) = Σ_g c_g · f_g(x)  (+ s · f_shared(x)),

i.e. every kept expert's intermediate activations are preserved (paper Appendix A); block order is
irrelevant. c_g are the plan's down-projection scales (`LayerPlan.scales`), s its `shared_scale`
(1 for always-on shared experts [paper, DeepSeek cards]; the mean sigmoid gate for Qwen2-MoE
[defined here]). The result is zero-padded to a uniform target width: padded rows of W_gate/W_up and
biases are 0, so act(0, 0) = 0 for SwiGLU and clamped SwiGLU, and padded columns of W_down are 0 —
padding is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.errors import PlanError


def concatenate_blocks(
    blocks: Sequence[ExpertWeights],
    scales: Sequence[float],
    *,
    shared: ExpertWeights | None = None,
    shared_scale: float | None = None,
    target_width: int | None = None,
) -> ExpertWeights:
    """The dense FFN of one layer as ONE expert (E = 1) in float64.

    blocks: k group experts, each E = 1 of width I_g on hidden H (widths may differ);
    scales: c [k], one per block; shared: the layer's shared experts as one expert (E = 1, width I_s)
    or None; shared_scale: s, required iff `shared` is given; target_width: final width W ≥ Σ I_g + I_s
    (None = exactly that sum). Returns gate/up [1, W, H], down [1, H, W] (+ biases where any part has them).
    """
    if not blocks:
        raise PlanError("groups: a dense FFN needs at least one expert block")
    if len(scales) != len(blocks):
        raise PlanError(f"scales: {len(scales)} down-projection scales for {len(blocks)} groups")
    if (shared is None) != (shared_scale is None):
        raise PlanError(
            "shared_scale: "
            + (
                "the checkpoint has shared experts but the plan gives no shared_scale"
                if shared is not None
                else f"the plan gives shared_scale={shared_scale} but the checkpoint has no shared experts"
            )
        )
    parts = [block.to(torch.float64) for block in blocks]
    part_scales = [float(c) for c in scales]
    if shared is not None:
        parts.append(shared.to(torch.float64))
        part_scales.append(float(shared_scale))
    hidden = parts[0].hidden
    for index, part in enumerate(parts):
        if part.num_experts != 1 or part.hidden != hidden:
            raise PlanError(
                f"block {index}: expected one expert on hidden size {hidden}, "
                f"got {part.num_experts} experts on hidden size {part.hidden}"
            )
    concatenated = ExpertWeights(
        gate=torch.cat([p.gate for p in parts], dim=1),
        up=torch.cat([p.up for p in parts], dim=1),
        down=torch.cat([c * p.down for p, c in zip(parts, part_scales, strict=True)], dim=2),
        gate_bias=_stacked_bias(parts, "gate_bias"),
        up_bias=_stacked_bias(parts, "up_bias"),
        down_bias=_summed_down_bias(parts, part_scales),
    )
    return concatenated if target_width is None else pad_to_width(concatenated, target_width)


def pad_to_width(ffn: ExpertWeights, width: int) -> ExpertWeights:
    """Zero-pad one expert (E = 1) of width I to width W ≥ I; exact (see module docstring).

    gate/up [1, I, H] → [1, W, H], down [1, H, I] → [1, H, W], gate/up biases [1, I] → [1, W].
    """
    extra = width - ffn.width
    if extra < 0:
        raise PlanError(f"target_width: {width} is smaller than the dense FFN's natural width {ffn.width}")
    if extra == 0:
        return ffn

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.nn.functional.pad(t, (0, 0, 0, extra))

    def cols(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.nn.functional.pad(t, (0, extra))

    return ExpertWeights(
        gate=rows(ffn.gate),
        up=rows(ffn.up),
        down=cols(ffn.down),
        gate_bias=cols(ffn.gate_bias),
        up_bias=cols(ffn.up_bias),
        down_bias=ffn.down_bias,
    )


def _stacked_bias(parts: Sequence[ExpertWeights], name: str) -> torch.Tensor | None:
    """Intermediate biases [1, I_p] stacked along the intermediate dimension; zeros for a part without one."""
    biases = [getattr(p, name) for p in parts]
    if all(b is None for b in biases):
        return None
    return torch.cat(
        [
            torch.zeros(1, p.width, dtype=torch.float64) if b is None else b
            for p, b in zip(parts, biases, strict=True)
        ],
        dim=1,
    )


def _summed_down_bias(parts: Sequence[ExpertWeights], scales: Sequence[float]) -> torch.Tensor | None:
    """b_down = Σ_p c_p b_down,p [1, H] over the parts that have one; None if none does."""
    terms = [c * p.down_bias for p, c in zip(parts, scales, strict=True) if p.down_bias is not None]
    return None if not terms else torch.stack(terms).sum(dim=0)
