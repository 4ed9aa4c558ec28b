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

Memory: the result is allocated once at its final width, in its storage dtype, and each block is written
into its slice as it comes (arithmetic — the c_g scaling, the b_down sum — in float64, then rounded
once on the copy): blocks may be produced lazily, one group in memory at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.errors import PlanError


def concatenate_blocks(
    blocks: Iterable[ExpertWeights],
    scales: Sequence[float],
    *,
    shared: ExpertWeights | None = None,
    shared_scale: float | None = None,
    target_width: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> ExpertWeights:
    """The dense FFN of one layer as ONE expert (E = 1), stored in `dtype`, computed in float64.

    blocks: k group experts, each E = 1 of width I_g on hidden H (widths may differ), consumed one at a
    time (with `target_width` given, a generator keeps only the current block in memory);
    scales: c [k], one per block; shared: the layer's shared experts as one expert (E = 1, width I_s)
    or None; shared_scale: s, required iff `shared` is given; target_width: final width W ≥ Σ I_g + I_s
    (None = exactly that sum). Returns gate/up [1, W, H], down [1, H, W] (+ biases where any part has them).
    """
    if (shared is None) != (shared_scale is None):
        raise PlanError(
            "shared_scale: "
            + (
                "the checkpoint has shared experts but the plan gives no shared_scale"
                if shared is not None
                else f"the plan gives shared_scale={shared_scale} but the checkpoint has no shared experts"
            )
        )
    if target_width is None:
        blocks = list(blocks)
        target_width = sum(block.width for block in blocks) + (0 if shared is None else shared.width)
    dense: _DenseFFN | None = None
    count = 0
    for count, block in enumerate(blocks, start=1):
        if dense is None:
            dense = _DenseFFN(target_width, block.hidden, dtype)
        if count <= len(scales):
            dense.add(count - 1, block, float(scales[count - 1]))
    if dense is None:
        raise PlanError("groups: a dense FFN needs at least one expert block")
    if count != len(scales):
        raise PlanError(f"scales: {len(scales)} down-projection scales for {count} groups")
    if shared is not None and shared_scale is not None:
        dense.add(count, shared, float(shared_scale))
    return dense.result()


def pad_to_width(ffn: ExpertWeights, width: int) -> ExpertWeights:
    """Zero-pad one expert (E = 1) of width I to width W ≥ I, in its dtype; exact (see module docstring).

    gate/up [1, I, H] → [1, W, H], down [1, H, I] → [1, H, W], gate/up biases [1, I] → [1, W]: the
    concatenation of the one block with c = 1.
    """
    return concatenate_blocks([ffn], [1.0], target_width=width, dtype=ffn.gate.dtype)


class _DenseFFN:
    """The dense FFN (E = 1) preallocated at width W in `dtype`, filled part by part at increasing offsets:
    zeros where no part is written (the padding, and the biases of parts without one)."""

    def __init__(self, width: int, hidden: int, dtype: torch.dtype) -> None:
        self.width, self.hidden, self.dtype = width, hidden, dtype
        self.gate = torch.zeros(1, width, hidden, dtype=dtype)
        self.up = torch.zeros(1, width, hidden, dtype=dtype)
        self.down = torch.zeros(1, hidden, width, dtype=dtype)
        self.biases: dict[str, torch.Tensor] = {}
        self.down_bias_terms: list[torch.Tensor] = []
        self.offset = 0

    def add(self, index: int, part: ExpertWeights, scale: float) -> None:
        """Write part `index` (c = scale) into the next I_p columns: gate/up rows, c·down columns, biases."""
        if part.num_experts != 1 or part.hidden != self.hidden:
            raise PlanError(
                f"block {index}: expected one expert on hidden size {self.hidden}, "
                f"got {part.num_experts} experts on hidden size {part.hidden}"
            )
        start, end = self.offset, self.offset + part.width
        if end > self.width:
            raise PlanError(
                f"target_width: {self.width} is smaller than the dense FFN's natural width (≥ {end})"
            )
        part = part.to(torch.float64)
        self.gate[:, start:end] = part.gate
        self.up[:, start:end] = part.up
        self.down[:, :, start:end] = scale * part.down
        for name in ("gate_bias", "up_bias"):
            bias = getattr(part, name)
            if bias is not None:
                self.biases.setdefault(name, torch.zeros(1, self.width, dtype=self.dtype))[:, start:end] = (
                    bias
                )
        if part.down_bias is not None:
            self.down_bias_terms.append(scale * part.down_bias)
        self.offset = end

    def result(self) -> ExpertWeights:
        """b_down = Σ_p c_p b_down,p [1, H] over the parts that have one (None if none does)."""
        terms = self.down_bias_terms
        return ExpertWeights(
            gate=self.gate,
            up=self.up,
            down=self.down,
            gate_bias=self.biases.get("gate_bias"),
            up_bias=self.biases.get("up_bias"),
            down_bias=None if not terms else torch.stack(terms).sum(dim=0).to(self.dtype),
        )
