"""Expert layouts as data: where a layer's expert matrices live and how they are arranged, and the ONE
conversion of each layout to and from canonical `ExpertWeights` (gate [E, I, H], up [E, I, H], down [E, H, I]).
A family declares its layouts (spec.py); nothing else in the core knows them.

MLPLayout — one bias-free gated MLP of width W (teacher dense layers, shared experts, the dense target):
    {prefix}{gate}.weight [W, H]    {prefix}{up}.weight [W, H]    {prefix}{down}.weight [H, W]
  projection names gate_proj / up_proj / down_proj, or Mixtral's w1 / w3 / w2. Block-FP8 weights
  (`….weight` F8_E4M3 + `….weight_scale_inv`: DeepSeek-V3, *-FP8 releases) are dequantised on read.

PerExpertLayout — each routed expert its own MLP at `{prefix}{e}.` (Qwen, Mixtral, OLMoE, DeepSeek releases,
  and what transformers 5.24 `save_pretrained` writes for them), e.g. `model.layers.3.mlp.experts.5.up_proj.weight`.

FusedLayout — all E experts in two 3-D tensors (Granite, GPT-OSS on disk; every family in memory):
    gate_up  {prefix}{gate_up}   order "out_in": [E, 2I, H]    order "in_out": [E, H, 2I]
    down     {prefix}{down}      order "out_in": [E, H, I]     order "in_out": [E, I, H]
  `order` names the two matrix axes; the expert axis is the first one of every fused tensor (matrices,
  biases, MXFP4 blocks and scales), which is what lets a read take only the selected experts' slices.
  gate and up share the 2I axis either as "halves" (0..I-1 gate, I..2I-1 up: transformers' `chunk(2)`) or
  "interleaved" (even gate, odd up: GPT-OSS); optional biases gate_up_bias [E, 2I] (same arrangement) and
  down_bias [E, H]. With `mxfp4`, a config whose quantization_config.quant_method is "mxfp4" stores each
  matrix as `{name}_blocks` U8 [E, out, in/32, 16] + `{name}_scales` U8 [E, out, in/32] (GPT-OSS
  releases), dequantised on read. Writing always gives the unquantised tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.fp8 import read_dequantized
from moe2dense_core.io.mxfp4 import BLOCK_SIZE, dequantize_mxfp4

ORDERS = ("out_in", "in_out")
GATE_UP_SPLITS = ("halves", "interleaved")


@dataclass(frozen=True)
class MLPLayout:
    """One bias-free gated MLP (see module docstring)."""

    projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    def names(self, prefix: str) -> tuple[str, str, str]:
        """On-disk (gate, up, down) weight names under `prefix`."""
        return tuple(f"{prefix}{p}.weight" for p in self.projections)  # type: ignore[return-value]

    def shapes(self, prefix: str, width: int, hidden: int) -> dict[str, tuple[int, ...]]:
        gate, up, down = self.names(prefix)
        return {gate: (width, hidden), up: (width, hidden), down: (hidden, width)}

    def read(self, reader: Any, prefix: str) -> ExpertWeights:
        """The MLP as one canonical float32 expert (E = 1)."""
        return self.read_stacked(reader, [prefix])

    def read_stacked(self, reader: Any, prefixes: Sequence[str]) -> ExpertWeights:
        """The MLPs under `prefixes` as canonical float32 experts [len(prefixes), …], in that order."""
        shapes = [reader.shape(name) for name in self.names(prefixes[0])]
        gate, up, down = (torch.empty((len(prefixes), *shape), dtype=torch.float32) for shape in shapes)
        out = ExpertWeights(gate=gate, up=up, down=down)
        for j, prefix in enumerate(prefixes):
            self.read_into(reader, prefix, out.narrow(j, 1))
        return out

    def read_into(self, reader: Any, prefix: str, out: ExpertWeights) -> None:
        """Copy the MLP under `prefix` into the one-expert views `out` (any dtype and strides): each stored
        matrix read once from the checkpoint's pages and converted by the copy itself (FP8 dequantised
        first), so no float32 copy of it is made on the way."""
        for dest, name in zip((out.gate[0], out.up[0], out.down[0]), self.names(prefix), strict=True):
            dest.copy_(read_dequantized(reader, name))

    def write(self, prefix: str, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """Tensors of `ffn` (one bias-free expert) under `prefix`."""
        if ffn.num_experts != 1 or any(b is not None for b in (ffn.gate_bias, ffn.up_bias, ffn.down_bias)):
            raise ValueError(f"{prefix}: an MLP is one bias-free expert, got {ffn.num_experts} (or biases)")
        gate, up, down = self.names(prefix)
        return {gate: ffn.gate[0], up: ffn.up[0], down: ffn.down[0]}


@dataclass(frozen=True)
class PerExpertLayout:
    """Routed expert e is the MLP `expert` at `{prefix}{e}.` (see module docstring)."""

    expert: MLPLayout = MLPLayout()

    def tensor_names(self, prefix: str, config: dict[str, Any], num_experts: int) -> list[str]:
        return [name for e in range(num_experts) for name in self.expert.names(f"{prefix}{e}.")]

    def shapes(
        self, prefix: str, config: dict[str, Any], num_experts: int, width: int, hidden: int
    ) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for e in range(num_experts):
            shapes.update(self.expert.shapes(f"{prefix}{e}.", width, hidden))
        return shapes

    def read(self, reader: Any, prefix: str, config: dict[str, Any], experts: Sequence[int]) -> ExpertWeights:
        """Experts `experts` (in that order), canonical float32; only their tensors are read."""
        return self.expert.read_stacked(reader, [f"{prefix}{e}." for e in experts])

    def read_into(
        self, reader: Any, prefix: str, config: dict[str, Any], experts: Sequence[int], out: ExpertWeights
    ) -> None:
        """Copy experts `experts` (in that order) into the canonical views `out` [len(experts), …], converted
        by the copy (MLPLayout.read_into)."""
        for j, e in enumerate(experts):
            self.expert.read_into(reader, f"{prefix}{e}.", out.narrow(j, 1))

    def write(self, prefix: str, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """One bias-free expert as expert 0."""
        return self.expert.write(f"{prefix}0.", ffn)


@dataclass(frozen=True)
class FusedLayout:
    """All experts in two fused tensors (see module docstring); names are relative to a prefix (on disk) or
    attribute names of the experts module (in memory)."""

    gate_up: str
    down: str
    order: str = "out_in"
    gate_up_split: str = "halves"
    gate_up_bias: str | None = None
    down_bias: str | None = None
    mxfp4: bool = False

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"FusedLayout.order: {self.order!r}, expected one of {ORDERS}")
        if self.gate_up_split not in GATE_UP_SPLITS:
            raise ValueError(
                f"FusedLayout.gate_up_split: {self.gate_up_split!r}, expected one of {GATE_UP_SPLITS}"
            )

    def quantized(self, config: dict[str, Any]) -> bool:
        """Whether `config` declares this layout's matrices stored as MXFP4 blocks/scales."""
        return self.mxfp4 and (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"

    def _stored(self, prefix: str, matrix: str, config: dict[str, Any]) -> list[str]:
        name = f"{prefix}{matrix}"
        return [f"{name}_blocks", f"{name}_scales"] if self.quantized(config) else [name]

    def _biases(self) -> list[str]:
        return [b for b in (self.gate_up_bias, self.down_bias) if b is not None]

    def tensor_names(self, prefix: str, config: dict[str, Any], num_experts: int) -> list[str]:
        matrices = [n for m in (self.gate_up, self.down) for n in self._stored(prefix, m, config)]
        return matrices + [f"{prefix}{b}" for b in self._biases()]

    def shapes(
        self, prefix: str, config: dict[str, Any], num_experts: int, width: int, hidden: int
    ) -> dict[str, tuple[int, ...]]:
        e = num_experts
        shapes: dict[str, tuple[int, ...]] = {}
        for matrix, (rows, cols) in ((self.gate_up, (2 * width, hidden)), (self.down, (hidden, width))):
            name = f"{prefix}{matrix}"
            if self.quantized(config):
                if cols % BLOCK_SIZE:
                    raise CheckpointError(
                        f"{name}: MXFP4 stores blocks of {BLOCK_SIZE} inputs, but its input size {cols} "
                        f"(hidden_size / expert width in config.json) is not a multiple of {BLOCK_SIZE}"
                    )
                shapes[f"{name}_blocks"] = (e, rows, cols // BLOCK_SIZE, BLOCK_SIZE // 2)
                shapes[f"{name}_scales"] = (e, rows, cols // BLOCK_SIZE)
            else:
                shapes[name] = (e, rows, cols) if self.order == "out_in" else (e, cols, rows)
        if self.gate_up_bias is not None:
            shapes[f"{prefix}{self.gate_up_bias}"] = (e, 2 * width)
        if self.down_bias is not None:
            shapes[f"{prefix}{self.down_bias}"] = (e, hidden)
        return shapes

    # ---- fused ↔ canonical ------------------------------------------------------------------------
    def split(
        self,
        gate_up: torch.Tensor,
        down: torch.Tensor,
        gate_up_bias: torch.Tensor | None = None,
        down_bias: torch.Tensor | None = None,
    ) -> ExpertWeights:
        """Canonical views (no copy) of fused tensors stored in this layout's order and arrangement."""
        if self.order == "in_out":
            gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
        gate, up = self._split_rows(gate_up)
        gate_bias, up_bias = (None, None) if gate_up_bias is None else self._split_rows(gate_up_bias)
        return ExpertWeights(gate, up, down, gate_bias, up_bias, down_bias)

    def _split_rows(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[E, 2I, …] → gate [E, I, …], up [E, I, …] along axis 1."""
        if self.gate_up_split == "halves":
            width = fused.shape[1] // 2
            return fused[:, :width], fused[:, width:]
        return fused[:, 0::2], fused[:, 1::2]

    def _join_rows(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Inverse of `_split_rows`: gate, up [E, I, …] → [E, 2I, …]."""
        if self.gate_up_split == "halves":
            return torch.cat([gate, up], dim=1)
        return torch.stack([gate, up], dim=2).flatten(1, 2)

    def from_module(self, experts: torch.nn.Module) -> ExpertWeights:
        """Canonical views (no copy, module dtype) of an in-memory experts module's fused parameters."""

        def param(name: str | None) -> torch.Tensor | None:
            return None if name is None else getattr(experts, name).detach()

        return self.split(
            param(self.gate_up), param(self.down), param(self.gate_up_bias), param(self.down_bias)
        )

    def read(self, reader: Any, prefix: str, config: dict[str, Any], experts: Sequence[int]) -> ExpertWeights:
        """Experts `experts` (in that order), canonical float32 (MXFP4 dequantised, gate/up separated).

        Only the selected experts' slices of each fused tensor are read (`reader.index_select` on the
        expert axis, axis 0 of every fused tensor, blocks and scales included), and only they are
        dequantised: the bytes read are len(experts)/E of the layer's."""
        experts = list(experts)

        def matrix(name: str) -> torch.Tensor:
            full = f"{prefix}{name}"
            if not self.quantized(config):
                return reader.index_select(full, experts).float()
            out_in = dequantize_mxfp4(
                reader.index_select(f"{full}_blocks", experts),
                reader.index_select(f"{full}_scales", experts),
                name=f"{full}_blocks",
            )
            return out_in if self.order == "out_in" else out_in.transpose(1, 2)

        def bias(name: str | None) -> torch.Tensor | None:
            return None if name is None else reader.index_select(f"{prefix}{name}", experts).float()

        views = self.split(
            matrix(self.gate_up), matrix(self.down), bias(self.gate_up_bias), bias(self.down_bias)
        )
        return replace(views, **{f.name: _contiguous(getattr(views, f.name)) for f in fields(views)})

    def read_into(
        self, reader: Any, prefix: str, config: dict[str, Any], experts: Sequence[int], out: ExpertWeights
    ) -> None:
        """Copy experts `experts` (in that order) into the canonical views `out` [len(experts), …]: `read`
        (float32, MXFP4 dequantised, gate / up separated), then copied."""
        out.copy_(self.read(reader, prefix, config, experts))

    def write(self, prefix: str, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """`ffn`'s experts in this layout, unquantised; a bias the layout has and `ffn` lacks is written as
        zeros (exact: adding 0), one `ffn` has and the layout lacks is refused."""
        has_bias = {
            "gate_up_bias": ffn.gate_bias is not None or ffn.up_bias is not None,
            "down_bias": ffn.down_bias is not None,
        }
        for slot, present in has_bias.items():
            if present and getattr(self, slot) is None:
                raise ValueError(f"{prefix}: the FFN has biases but the fused layout has no {slot}")
        e, width, hidden = ffn.num_experts, ffn.width, ffn.hidden
        zeros = ffn.gate.new_zeros
        gate_up, down = self._join_rows(ffn.gate, ffn.up), ffn.down
        if self.order == "in_out":
            gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
        out = {f"{prefix}{self.gate_up}": gate_up.contiguous(), f"{prefix}{self.down}": down.contiguous()}
        if self.gate_up_bias is not None:
            gate_bias = zeros(e, width) if ffn.gate_bias is None else ffn.gate_bias
            up_bias = zeros(e, width) if ffn.up_bias is None else ffn.up_bias
            out[f"{prefix}{self.gate_up_bias}"] = self._join_rows(gate_bias, up_bias)
        if self.down_bias is not None:
            out[f"{prefix}{self.down_bias}"] = zeros(e, hidden) if ffn.down_bias is None else ffn.down_bias
        return out


def _contiguous(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.contiguous()


ExpertLayout = PerExpertLayout | FusedLayout
"""How a family stores its routed experts on disk."""
