"""ExpertBlocks: a MoE layer's routed experts read from the checkpoint a block of experts at a time.

Layer-by-layer calibration never holds a whole layer's routed experts. The E experts of a layer are split
into blocks of consecutive experts [s, s + B), each
    B = max(1, ⌊max_block_bytes / b⌋) experts,   b = 4 · (3·I·H + 2·I + H) bytes
(one expert of width I on hidden size H in float32, room for biases included), and a block is held in the
experts module's own layout (`spec.module_experts`, on the device, in the compute dtype), the tensors an
in-memory teacher holds:
  - when the checkpoint stores the experts exactly so (a fused layout with the module's arrangement,
    unquantised, in the compute dtype: Granite releases), a block is a view of the mapped file — no copy,
    as transformers' loader leaves such parameters;
  - otherwise its experts are read one at a time with `spec.read_experts_into` into a block buffer
    allocated once per pass over the blocks: per-expert checkpoints are converted by the copy from their
    pages (bf16 → the compute dtype in one pass), fused ones go through one expert in float32 (MXFP4 / FP8
    dequantised); the block plus its checkpoint pages (and that one float32 expert).
`reader.release_mapped()` runs after every block, so mapped pages do not accumulate, and only one block is
alive at a time.

Two computations run over the blocks:
  routed_forward   the experts module's forward, x [T, H], top-k indices / weights idx, w [T, k] → [T, H]
                       out[t] = Σ_{j<k} w[t, j] · f_{idx[t, j]}(x_t)
                   every expert runs on its routed tokens only, in x's dtype, and only blocks holding a
                   routed expert are read; computed as transformers' default experts implementation does it,
                   so it is bit-identical to the in-memory teacher on the CPU (see `routed_forward`).
  all_outputs(x)   f_e(x_t) for EVERY expert e on every token, x [T, H] → [E, T, H] in x's dtype (the
                   statistics' expert outputs; f_e is `ExpertWeights.forward` on the block's canonical
                   views, as the in-memory statistics compute it), filled block by block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.integrations.moe import _grouped_linear

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.layouts import FusedLayout
from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.stats.memory_bounds import check_memory_bounds

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Block:
    """Experts start … stop−1 of one layer in the experts module's own layout (`layout` =
    spec.module_experts): `tensors` maps the module's attribute names to the block's [stop − start, …]
    tensors."""

    start: int
    stop: int
    layout: FusedLayout
    tensors: dict[str, torch.Tensor]

    def tensor(self, name: str | None) -> torch.Tensor | None:
        return None if name is None else self.tensors[name]

    def canonical(self) -> ExpertWeights:
        """Canonical views, as `spec.module_expert_weights` gives them for an in-memory experts module."""
        layout = self.layout
        return layout.split(
            self.tensors[layout.gate_up],
            self.tensors[layout.down],
            self.tensor(layout.gate_up_bias),
            self.tensor(layout.down_bias),
        )


@dataclass(frozen=True)
class ExpertBlocks:
    """The routed experts of MoE layer `layer`, in blocks of `block_size` consecutive experts (module
    docstring)."""

    reader: CheckpointReader
    spec: MoEArchSpec
    layer: int
    block_size: int
    device: torch.device

    @classmethod
    def of(
        cls,
        reader: CheckpointReader,
        spec: MoEArchSpec,
        layer: int,
        max_block_bytes: int,
        device: torch.device,
    ) -> ExpertBlocks:
        """Blocks of B = max(1, ⌊max_block_bytes / b⌋) experts (module docstring)."""
        check_memory_bounds(max_block_bytes=max_block_bytes)
        dims = spec.dims(reader.config)
        width, hidden = dims.expert_width, dims.hidden
        expert_bytes = FLOAT32_BYTES * (3 * width * hidden + 2 * width + hidden)
        return cls(reader, spec, layer, max(1, max_block_bytes // expert_bytes), device)

    @property
    def num_experts(self) -> int:
        return self.spec.dims(self.reader.config).num_experts

    def bytes_per_token(self, itemsize: int) -> int:
        """Memory of `all_outputs` per token: the outputs [E, ·, H] and one block's outputs [B, ·, H] and
        intermediates (gate, up, activation [B, ·, I]), at `itemsize` bytes per value."""
        dims = self.spec.dims(self.reader.config)
        block = min(self.block_size, dims.num_experts)
        return itemsize * (dims.num_experts * dims.hidden + block * (dims.hidden + 3 * dims.expert_width))

    def each(
        self, dtype: torch.dtype, compute: Callable[[Block], None], wanted: torch.Tensor | None = None
    ) -> None:
        """compute(block) for the blocks in expert order, in `dtype` on the device — only those holding an
        expert of `wanted` (sorted expert indices) when given. Read blocks share one buffer, so compute
        must not keep them; the checkpoint's maps are released after every block."""
        layout = self.spec.module_experts
        stored = self._stored_as_module(dtype)
        buffer = self._zeros(dtype) if stored is None else {}
        for start in range(0, self.num_experts, self.block_size):
            stop = min(start + self.block_size, self.num_experts)
            if wanted is not None and not bool(((wanted >= start) & (wanted < stop)).any()):
                continue
            if stored is None:
                tensors = {attr: t[: stop - start] for attr, t in buffer.items()}
                self._read_into(Block(start, stop, layout, tensors))
            else:
                tensors = {
                    attr: self.reader.get(name)[start:stop].to(self.device) for attr, name in stored.items()
                }
            compute(Block(start, stop, layout, tensors))
            self.reader.release_mapped()

    @torch.no_grad()
    def all_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """f_e(x_t) for every expert e and token t: x [T, H] → [E, T, H] in x's dtype."""
        out = x.new_empty((self.num_experts, *x.shape))

        def fill(block: Block) -> None:
            out[block.start : block.stop] = block.canonical().forward(x, self.spec.activation)

        self.each(x.dtype, fill)
        return out

    def _zeros(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A block buffer in the module's layout: attribute → zeros [block_size, …] on the device in `dtype`."""
        dims = self.spec.dims(self.reader.config)
        size = min(self.block_size, dims.num_experts)
        shapes = self.spec.module_experts.shapes("", self.reader.config, size, dims.expert_width, dims.hidden)
        return {attr: torch.zeros(shape, dtype=dtype, device=self.device) for attr, shape in shapes.items()}

    def _read_into(self, block: Block) -> None:
        """Read the block's experts into its tensors one expert at a time with `spec.read_experts_into`:
        per-expert checkpoints convert straight from their pages into the block, fused ones hold one
        expert in float32 on the way."""
        views = block.canonical()
        for j in range(block.stop - block.start):
            self.spec.read_experts_into(self.reader, self.layer, [block.start + j], views.narrow(j, 1))

    def _stored_as_module(self, dtype: torch.dtype) -> dict[str, str] | None:
        """Module attribute → on-disk tensor name, when the checkpoint stores the routed experts in the
        module's own arrangement (fused, same axis order, gate/up arrangement and biases, unquantised) and
        in `dtype`; else None."""
        disk, module = self.spec.disk_experts, self.spec.module_experts
        if not isinstance(disk, FusedLayout) or disk.quantized(self.reader.config):
            return None
        if (disk.order, disk.gate_up_split) != (module.order, module.gate_up_split):
            return None
        pairs = [
            (module.gate_up, disk.gate_up),
            (module.down, disk.down),
            (module.gate_up_bias, disk.gate_up_bias),
            (module.down_bias, disk.down_bias),
        ]
        if any((attr is None) != (name is None) for attr, name in pairs):
            return None
        prefix = self.spec.experts_prefix(self.layer)
        stored = {attr: prefix + name for attr, name in pairs if attr is not None and name is not None}
        return stored if all(self.reader.dtype(name) == dtype for name in stored.values()) else None


def routed_forward(blocks: ExpertBlocks, experts: nn.Module) -> Callable[..., torch.Tensor]:
    """An instance-level `forward` for the (meta) experts module `experts` of `blocks.layer`: the routed output
    from the blocks (module docstring), computed as transformers 5.24's default experts implementation
    (`grouped_mm_experts_forward`) computes it, so that it is bit-identical on the CPU: the T·k
    (token, slot) pairs sorted by expert once; each block's experts run on their pairs with
    `_grouped_linear` and the module's own `_apply_gate`; every pair weighted by its routing weight;
    out[t] = the sum over token t's k pairs."""
    layout = blocks.spec.module_experts
    transposed = layout.order == "in_out"

    @torch.no_grad()
    def forward(
        hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        t, k = top_k_index.shape
        pair_experts, order = torch.sort(top_k_index.reshape(-1))  # pair order[i] is of token order[i] // k
        pair_weights = top_k_weights.reshape(-1)
        out_dtype = torch.promote_types(hidden_states.dtype, top_k_weights.dtype)
        pairs = hidden_states.new_zeros((t * k, hidden_states.shape[-1]), dtype=out_dtype)

        def run(block: Block) -> None:
            bounds = torch.tensor([block.start, block.stop], device=pair_experts.device)
            first, stop = torch.searchsorted(pair_experts, bounds).tolist()
            local = pair_experts[first:stop] - block.start  # each pair's expert within the block
            rows = order[first:stop]
            offsets = torch.cumsum(
                torch.bincount(local, minlength=block.stop - block.start), 0, dtype=torch.int32
            )

            def bias(name: str | None) -> torch.Tensor | None:
                return None if name is None else block.tensors[name][local]

            gated = experts._apply_gate(
                _grouped_linear(
                    hidden_states[rows // k],
                    block.tensors[layout.gate_up],
                    offsets,
                    bias(layout.gate_up_bias),
                    transposed,
                )
            )
            down = _grouped_linear(
                gated, block.tensors[layout.down], offsets, bias(layout.down_bias), transposed
            )
            pairs[rows] = down * pair_weights[rows, None]

        blocks.each(hidden_states.dtype, run, wanted=pair_experts)
        return pairs.view(t, k, -1).sum(dim=1).to(hidden_states.dtype)

    return forward
