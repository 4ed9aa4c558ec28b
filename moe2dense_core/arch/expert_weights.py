"""Canonical expert weights: the one in-memory layout every stage of the core shares.

Whatever a family stores on disk (per-expert matrices, fused 3-D tensors, interleaved gate/up,
MXFP4 blocks), its MoEArchSpec converts it to this layout, and everything downstream (statistics,
grouping, assembly) reads only this.

Shapes, for E experts of intermediate width I on hidden size H:
    gate      [E, I, H]      up        [E, I, H]      down      [E, H, I]
    gate_bias [E, I] | None  up_bias   [E, I] | None  down_bias [E, H] | None

Expert e computes  f_e(x) = down_e · act(gate_e·x + gate_bias_e, up_e·x + up_bias_e) + down_bias_e.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from moe2dense_core.errors import CheckpointError


@dataclass(frozen=True)
class Activation:
    """The gated activation act(g, u) of one family, and the config.json fields that select it.

    kind = "swiglu":          act(g, u) = silu(g) · u                            (Qwen, Mixtral, DeepSeek, OLMoE,
                                                                                  Granite: `hidden_act` silu)
    kind = "clamped_swiglu":  g' = min(g, limit), u' = clamp(u, -limit, limit),
                              act(g, u) = (u' + 1) · g' · sigmoid(alpha · g')    (GPT-OSS: alpha 1.702, limit 7)
    Both are elementwise in the intermediate dimension, which is what makes concatenating experts exact.
    """

    kind: str = "swiglu"
    alpha: float = 1.702
    limit: float = 7.0

    def __call__(self, gate_pre: torch.Tensor, up_pre: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            return F.silu(gate_pre) * up_pre
        if self.kind == "clamped_swiglu":
            g = gate_pre.clamp(max=self.limit)
            u = up_pre.clamp(min=-self.limit, max=self.limit)
            return (u + 1) * (g * torch.sigmoid(self.alpha * g))
        raise ValueError(
            f"Activation.kind: unknown activation {self.kind!r} (expected 'swiglu' or 'clamped_swiglu')"
        )

    def config_fields(self) -> dict[str, tuple[object, ...]]:
        """config.json field → the values under which transformers 5.24 computes this activation; an absent
        field takes transformers' default, which is the first value. swiglu: `hidden_act` (ACT2FN maps both
        "silu" and "swish" to SiLU); clamped_swiglu: GPT-OSS's `swiglu_alpha`, `swiglu_limit`."""
        if self.kind == "swiglu":
            return {"hidden_act": ("silu", "swish")}
        return {"swiglu_alpha": (self.alpha,), "swiglu_limit": (self.limit,)}

    def check_config(self, config: dict[str, Any]) -> None:
        """CheckpointError naming the field when config.json selects another activation than this one."""
        for key, accepted in self.config_fields().items():
            value = config.get(key, accepted[0])
            if isinstance(value, bool) or value not in accepted:
                raise CheckpointError(
                    f"config.json field {key!r} = {value!r}: model_type {config.get('model_type')!r} is "
                    f"converted as {self.kind} and needs {' or '.join(map(repr, accepted))}"
                )


@dataclass(frozen=True)
class ExpertWeights:
    """E experts of one layer in canonical layout (see module docstring for shapes)."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        e, i, h = self.gate.shape
        expected = {
            "gate": (self.gate, (e, i, h)),
            "up": (self.up, (e, i, h)),
            "down": (self.down, (e, h, i)),
            "gate_bias": (self.gate_bias, (e, i)),
            "up_bias": (self.up_bias, (e, i)),
            "down_bias": (self.down_bias, (e, h)),
        }
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"ExpertWeights.{name}: shape {tuple(tensor.shape)}, expected {shape}")

    @property
    def num_experts(self) -> int:
        return self.gate.shape[0]

    @property
    def width(self) -> int:
        """Intermediate width I of one expert."""
        return self.gate.shape[1]

    @property
    def hidden(self) -> int:
        return self.gate.shape[2]

    def select(self, experts: Sequence[int]) -> ExpertWeights:
        """The sub-collection of the given expert indices, in that order."""
        idx = torch.as_tensor(list(experts), dtype=torch.long)
        return ExpertWeights(**{k: (None if v is None else v[idx]) for k, v in self._fields().items()})

    def narrow(self, start: int, length: int) -> ExpertWeights:
        """Views (no copy) of experts start … start + length − 1."""
        return ExpertWeights(
            **{k: (None if v is None else v.narrow(0, start, length)) for k, v in self._fields().items()}
        )

    def copy_(self, source: ExpertWeights) -> None:
        """Copy `source`'s tensors into these (in place, converting dtype); ValueError when one of them has a
        bias the other lacks."""
        for name, mine in self._fields().items():
            theirs = source._fields()[name]
            if (mine is None) != (theirs is None):
                raise ValueError(f"ExpertWeights.copy_: {name} is present in only one of the two")
            if mine is not None:
                mine.copy_(theirs)

    def to(self, dtype: torch.dtype) -> ExpertWeights:
        return replace(self, **{k: (None if v is None else v.to(dtype)) for k, v in self._fields().items()})

    def intermediate(self, x: torch.Tensor, activation: Activation) -> torch.Tensor:
        """act(gate·x + b_g, up·x + b_u) for every expert: x [T, H] → [E, T, I]."""
        g = torch.einsum("eih,th->eti", self.gate, x)
        u = torch.einsum("eih,th->eti", self.up, x)
        if self.gate_bias is not None:
            g = g + self.gate_bias[:, None, :]
        if self.up_bias is not None:
            u = u + self.up_bias[:, None, :]
        return activation(g, u)

    def forward(self, x: torch.Tensor, activation: Activation) -> torch.Tensor:
        """f_e(x) for every expert e on every token: x [T, H] → [E, T, H]."""
        out = torch.einsum("ehi,eti->eth", self.down, self.intermediate(x, activation))
        if self.down_bias is not None:
            out = out + self.down_bias[:, None, :]
        return out

    def _fields(self) -> dict[str, torch.Tensor | None]:
        return {
            "gate": self.gate,
            "up": self.up,
            "down": self.down,
            "gate_bias": self.gate_bias,
            "up_bias": self.up_bias,
            "down_bias": self.down_bias,
        }
