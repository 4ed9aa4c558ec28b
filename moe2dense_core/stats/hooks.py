"""Statistics hooks: fill an ExpertStats from a teacher's ordinary forward passes.

Within each MoE layer the teacher calls, in a family-dependent order, its router
(→ logits [T, E], top-k weights [T, k], top-k indices [T, k]), its routed-experts module (first input:
hidden states x [T, H]) and, for Qwen2-MoE, its shared-expert gate (→ pre-sigmoid gate [T, 1]).
A collector per layer keeps whichever of these parts have arrived; when the last one arrives it
computes p(t) = spec.router_probs(logits) and, when the statistics request expert outputs
(`ExpertStats.collected`, request.py), f_e(x_t) for EVERY expert e on EVERY token t (the teacher's
own experts only ran its top-k), then calls LayerStats.update. Without expert outputs the experts
module is not hooked at all: router statistics cost a softmax and a few [T, E] reductions.

Expert outputs are computed in `outputs_dtype` (float32, or float64 for a fully float64 pass) from an
expert source (`AllExpertOutputs`), made once per layer call:
  default       the experts module's own parameters, converted to outputs_dtype once per layer call
                (free when they already have that dtype: the canonical weights are views) — the whole
                layer's experts in memory (`ConvertedExperts`);
  expert_source a callable layer → source, e.g. layer-by-layer collection's `ExpertBlocks`
                (streamed_experts.py): the experts read from disk a block at a time for every chunk,
                so no layer's routed experts are ever all in memory.
Tokens are processed in chunks of ⌊max_chunk_bytes / source.bytes_per_token(itemsize)⌋ (at least 1), so
that the outputs [E, T_chunk, H] and the intermediate activations of one chunk stay within
`max_chunk_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from moe2dense_core.arch.expert_weights import Activation, ExpertWeights
from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.layer_stats import LayerStats, StatsError
from moe2dense_core.stats.memory_bounds import DEFAULT_MAX_CHUNK_BYTES, check_memory_bounds


class AllExpertOutputs(Protocol):
    """f_e(x_t) for every expert e of one MoE layer on every token t."""

    def bytes_per_token(self, itemsize: int) -> int:
        """Memory of `all_outputs` per token (outputs and intermediates) at `itemsize` bytes per value."""
        ...

    def all_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] → [E, T, H], in x's dtype."""
        ...


ExpertSource = Callable[[int], AllExpertOutputs]
"""MoE layer index → where that layer's all-expert outputs come from."""


@dataclass(frozen=True)
class ConvertedExperts:
    """All E experts of a layer held in memory (canonical, in the outputs dtype)."""

    weights: ExpertWeights
    activation: Activation

    def bytes_per_token(self, itemsize: int) -> int:
        """Outputs [E, ·, H] and intermediates [E, ·, I] (gate, up, activation) per token."""
        w = self.weights
        return itemsize * w.num_experts * (w.hidden + 3 * w.width)

    def all_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights.forward(x, self.activation)


@contextmanager
def attach_stat_hooks(
    model: nn.Module,
    spec: MoEArchSpec,
    stats: ExpertStats,
    *,
    outputs_dtype: torch.dtype = torch.float32,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    expert_source: ExpertSource | None = None,
) -> Iterator[ExpertStats]:
    """Hook every MoE layer of `model` so each forward adds its tokens to `stats`; yields `stats`.

    Layers are spec.dims(stats.config).moe_layers; a missing LayerStats is created. What is collected is
    `stats.collected`. outputs_dtype: float32 or float64, the dtype of the all-expert outputs and their
    per-chunk norms and Gram (accumulators are float64). expert_source: where each layer's all-expert
    outputs come from (module docstring); default: the experts module's parameters.
    The hooks are removed when the block exits, also on an exception. On a normal exit, a layer whose
    router ran without its experts (or the reverse) raises StatsError: the forward did not follow the
    MoE block.
    """
    check_memory_bounds(max_chunk_bytes=max_chunk_bytes)
    if outputs_dtype not in (torch.float32, torch.float64):
        raise StatsError(f"outputs_dtype must be torch.float32 or torch.float64, got {outputs_dtype}")
    dims = spec.dims(stats.config)
    collectors: list[_LayerCollector] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for layer in dims.moe_layers:
            experts = spec.experts_module(model, layer)
            shared_gate = spec.shared_gate_module(model, layer)
            if expert_source is None:
                source = _module_source(spec, experts, outputs_dtype)
            else:
                source = _layer_source(expert_source, layer)
            collector = _LayerCollector(
                spec, stats.new_layer(layer), source, shared_gate is not None, outputs_dtype, max_chunk_bytes
            )
            collectors.append(collector)
            handles.append(spec.router_module(model, layer).register_forward_hook(collector.on_router))
            if stats.collected.expert_outputs:
                handles.append(experts.register_forward_pre_hook(collector.on_experts, with_kwargs=True))
            if shared_gate is not None:
                handles.append(shared_gate.register_forward_hook(collector.on_shared_gate))
        yield stats
        incomplete = [c.describe_pending() for c in collectors if c.pending]
        if incomplete:
            raise StatsError("MoE layers saw part of a forward only: " + "; ".join(incomplete))
    finally:
        for handle in handles:
            handle.remove()


def _module_source(
    spec: MoEArchSpec, experts: nn.Module, dtype: torch.dtype
) -> Callable[[], AllExpertOutputs]:
    """The experts module's parameters, converted to `dtype` when called (once per layer call)."""
    return lambda: ConvertedExperts(spec.module_expert_weights(experts).to(dtype), spec.activation)


def _layer_source(expert_source: ExpertSource, layer: int) -> Callable[[], AllExpertOutputs]:
    return lambda: expert_source(layer)


class _LayerCollector:
    """Gathers router output, expert input (and shared gate) of one layer's forward, then updates."""

    def __init__(
        self,
        spec: MoEArchSpec,
        stats: LayerStats,
        source: Callable[[], AllExpertOutputs],
        has_shared_gate: bool,
        outputs_dtype: torch.dtype,
        max_chunk_bytes: int,
    ) -> None:
        self.spec = spec
        self.stats = stats
        self.source = source
        self.outputs_dtype = outputs_dtype
        self.max_chunk_bytes = max_chunk_bytes
        self.required = (
            {"router"}
            | ({"experts"} if stats.collected.expert_outputs else set())
            | ({"shared_gate"} if has_shared_gate else set())
        )
        self.pending: dict[str, Any] = {}

    # ---- hooks ------------------------------------------------------------------------------------
    def on_router(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not (isinstance(output, tuple) and len(output) == 3):
            raise StatsError(
                f"layer {self.stats.layer}: router {type(module).__name__} returned {type(output).__name__}, "
                "expected (logits [T, E], top-k weights [T, k], top-k indices [T, k])"
            )
        logits, weights, indices = (t.detach() for t in output)
        self._put("router", (logits.reshape(-1, logits.shape[-1]), weights, indices))

    def on_experts(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            raise StatsError(
                f"layer {self.stats.layer}: experts module {type(module).__name__} got no hidden states"
            )
        self._put("experts", hidden.detach().reshape(-1, hidden.shape[-1]))

    def on_shared_gate(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._put("shared_gate", torch.sigmoid(output.detach().double()).reshape(-1))

    # ---- accumulation ---------------------------------------------------------------------------------
    def _put(self, part: str, value: Any) -> None:
        if part in self.pending:
            raise StatsError(
                f"layer {self.stats.layer}: {part} ran twice before the layer's "
                f"{sorted(self.required - set(self.pending))} ran; the forward does not follow the MoE block"
            )
        self.pending[part] = value
        if set(self.pending) == self.required:
            parts, self.pending = self.pending, {}
            self._update(parts)

    def describe_pending(self) -> str:
        missing = sorted(self.required - set(self.pending))
        return f"layer {self.stats.layer} got {sorted(self.pending)}, missing {missing}"

    @torch.no_grad()
    def _update(self, parts: dict[str, Any]) -> None:
        logits, weights, indices = parts["router"]
        x = parts.get("experts")
        shared_gate = parts.get("shared_gate")
        t = logits.shape[0]
        for name, tensor in (("experts' input", x), ("shared gate", shared_gate)):
            if tensor is not None and tensor.shape[0] != t:
                raise StatsError(
                    f"layer {self.stats.layer}: {name} covers {tensor.shape[0]} tokens, the router {t}"
                )
        probs = self.spec.router_probs(logits)
        if x is None:
            self.stats.update(probs, weights, indices, None, shared_gate)
            return
        experts = self.source()
        per_token = experts.bytes_per_token(self.outputs_dtype.itemsize)
        token_chunk = max(1, self.max_chunk_bytes // per_token)
        for start in range(0, t, token_chunk):
            rows = slice(start, min(t, start + token_chunk))
            self.stats.update(  # one chunk's outputs [E, T_chunk, H] alive at a time: not bound to a name
                probs[rows],
                weights[rows],
                indices[rows],
                experts.all_outputs(x[rows].to(self.outputs_dtype)),
                None if shared_gate is None else shared_gate[rows],
            )
