"""Statistics hooks: fill an ExpertStats from a teacher's ordinary forward passes.

Within each MoE layer the teacher calls, in a family-dependent order, its router
(→ logits [T, E], top-k weights [T, k], top-k indices [T, k]), its routed-experts module (first input:
hidden states x [T, H]) and, for Qwen2-MoE, its shared-expert gate (→ pre-sigmoid gate [T, 1]).
A collector per layer keeps whichever of these parts have arrived; when the last one arrives it
computes p(t) = spec.router_probs(logits) and f_e(x_t) for EVERY expert e on EVERY token t in float64
(the teacher's own experts only ran its top-k), then calls LayerStats.update. Tokens are processed in
chunks so that the float64 outputs [E, T_chunk, H] and one slice of float64 expert weights stay
within `max_chunk_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import MoEArchSpec
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.layer_stats import LayerStats, StatsError

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
_F64_BYTES = 8


@contextmanager
def attach_stat_hooks(
    model: nn.Module,
    spec: MoEArchSpec,
    stats: ExpertStats,
    *,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> Iterator[ExpertStats]:
    """Hook every MoE layer of `model` so each forward adds its tokens to `stats`; yields `stats`.

    Layers are spec.dims(stats.config).moe_layers; a missing LayerStats is created. The hooks are
    removed when the block exits, also on an exception. On a normal exit, a layer whose router ran
    without its experts (or the reverse) raises StatsError: the forward did not follow the MoE block.
    """
    if max_chunk_bytes <= 0:
        raise StatsError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
    dims = spec.dims(stats.config)
    collectors = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for layer in dims.moe_layers:
            layer_stats = stats.layers.setdefault(layer, LayerStats(layer, dims.num_experts, dims.top_k))
            experts = spec.experts_module(model, layer)
            shared_gate = spec.shared_gate_module(model, layer)
            collector = _LayerCollector(spec, layer_stats, experts, shared_gate is not None, max_chunk_bytes)
            collectors.append(collector)
            handles.append(spec.router_module(model, layer).register_forward_hook(collector.on_router))
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


class _LayerCollector:
    """Gathers router output, expert input (and shared gate) of one layer's forward, then updates."""

    def __init__(
        self,
        spec: MoEArchSpec,
        stats: LayerStats,
        experts: nn.Module,
        has_shared_gate: bool,
        max_chunk_bytes: int,
    ) -> None:
        self.spec = spec
        self.stats = stats
        self.experts = experts
        self.max_chunk_bytes = max_chunk_bytes
        self.required = {"router", "experts"} | ({"shared_gate"} if has_shared_gate else set())
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
        return f"layer {self.stats.layer} got {sorted(self.pending)}, missing {sorted(self.required - set(self.pending))}"

    @torch.no_grad()
    def _update(self, parts: dict[str, Any]) -> None:
        logits, weights, indices = parts["router"]
        x = parts["experts"]
        shared_gate = parts.get("shared_gate")
        t = x.shape[0]
        for name, tensor in (("router logits", logits), ("shared gate", shared_gate)):
            if tensor is not None and tensor.shape[0] != t:
                raise StatsError(
                    f"layer {self.stats.layer}: {name} cover {tensor.shape[0]} tokens, experts got {t}"
                )
        probs = self.spec.router_probs(logits)
        weights_all = self.spec.module_expert_weights(self.experts)
        e, hidden = weights_all.num_experts, weights_all.hidden
        token_chunk = max(1, self.max_chunk_bytes // (_F64_BYTES * e * hidden))
        for start in range(0, t, token_chunk):
            rows = slice(start, min(t, start + token_chunk))
            outputs = _all_expert_outputs(weights_all, x[rows], self.spec, self.max_chunk_bytes)
            self.stats.update(
                probs[rows],
                weights[rows],
                indices[rows],
                outputs,
                None if shared_gate is None else shared_gate[rows],
            )


def _all_expert_outputs(
    weights: ExpertWeights, x: torch.Tensor, spec: MoEArchSpec, max_chunk_bytes: int
) -> torch.Tensor:
    """f_e(x) for every expert, float64: x [T, H] → [E, T, H], converting a slice of experts at a time
    to float64 so no more than ~max_chunk_bytes of float64 weights exist at once."""
    e = weights.num_experts
    per_expert = _F64_BYTES * 3 * weights.width * weights.hidden
    expert_chunk = max(1, max_chunk_bytes // per_expert)
    x64 = x.to(torch.float64)
    out = torch.empty(e, x.shape[0], weights.hidden, dtype=torch.float64, device=x.device)
    for start in range(0, e, expert_chunk):
        ids = list(range(start, min(e, start + expert_chunk)))
        part = weights.select(ids).to(torch.float64)
        out[ids[0] : ids[-1] + 1] = part.forward(x64, spec.activation)
    return out
