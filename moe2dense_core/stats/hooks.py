"""Statistics hooks: fill an ExpertStats from a teacher's ordinary forward passes.

Within each MoE layer the teacher calls, in a family-dependent order, its router
(→ logits [T, E], top-k weights [T, k], top-k indices [T, k]), its routed-experts module (first input:
hidden states x [T, H]) and, for Qwen2-MoE, its shared-expert gate (→ pre-sigmoid gate [T, 1]).
A collector per layer keeps whichever of these parts have arrived; when the last one arrives it
computes p(t) = spec.router_probs(logits) and, when the statistics request expert outputs
(`ExpertStats.collected`, request.py), f_e(x_t) for EVERY expert e on EVERY token t (the teacher's
own experts only ran its top-k), then calls LayerStats.update. Without expert outputs the experts
module is not hooked at all: router statistics cost a softmax and a few [T, E] reductions.

Expert outputs are computed in `outputs_dtype` (float32, or float64 for a fully float64 pass) from the
layer's expert weights converted to that dtype ONCE per layer call — or, with hold_weights=True, once
until `StatHooks.release_weights()` (layer-by-layer collection runs every batch through a layer before
the next). Converting is free when the weights already have that dtype (the canonical weights are views);
otherwise it is the "+ converted copy of one layer's experts" in collect.py's peak-memory formula.
Tokens are processed in chunks so that the outputs [E, T_chunk, H] and the intermediate activations
[E, T_chunk, I] (gate, up, act) of one chunk stay within `max_chunk_bytes`.
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


class StatHooks:
    """What `attach_stat_hooks` yields: the statistics being filled and the held converted weights."""

    def __init__(self, stats: ExpertStats, collectors: list[_LayerCollector]) -> None:
        self.stats = stats
        self._collectors = collectors

    def release_weights(self) -> None:
        """Drop every layer's converted expert weights (they are converted again on the next call)."""
        for collector in self._collectors:
            collector.converted = None


@contextmanager
def attach_stat_hooks(
    model: nn.Module,
    spec: MoEArchSpec,
    stats: ExpertStats,
    *,
    outputs_dtype: torch.dtype = torch.float32,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    hold_weights: bool = False,
) -> Iterator[StatHooks]:
    """Hook every MoE layer of `model` so each forward adds its tokens to `stats`; yields a StatHooks.

    Layers are spec.dims(stats.config).moe_layers; a missing LayerStats is created. What is collected is
    `stats.collected`. outputs_dtype: float32 or float64, the dtype of the all-expert outputs and their
    per-chunk norms and Gram (accumulators are float64). hold_weights: keep each layer's converted
    expert weights between calls until `release_weights()` (else dropped after every call).
    The hooks are removed when the block exits, also on an exception. On a normal exit, a layer whose
    router ran without its experts (or the reverse) raises StatsError: the forward did not follow the
    MoE block.
    """
    if max_chunk_bytes <= 0:
        raise StatsError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
    if outputs_dtype not in (torch.float32, torch.float64):
        raise StatsError(f"outputs_dtype must be torch.float32 or torch.float64, got {outputs_dtype}")
    dims = spec.dims(stats.config)
    collectors: list[_LayerCollector] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    hooks = StatHooks(stats, collectors)
    try:
        for layer in dims.moe_layers:
            experts = spec.experts_module(model, layer)
            shared_gate = spec.shared_gate_module(model, layer)
            collector = _LayerCollector(
                spec,
                stats.new_layer(layer),
                experts,
                shared_gate is not None,
                outputs_dtype,
                max_chunk_bytes,
                hold_weights,
            )
            collectors.append(collector)
            handles.append(spec.router_module(model, layer).register_forward_hook(collector.on_router))
            if stats.collected.expert_outputs:
                handles.append(experts.register_forward_pre_hook(collector.on_experts, with_kwargs=True))
            if shared_gate is not None:
                handles.append(shared_gate.register_forward_hook(collector.on_shared_gate))
        yield hooks
        incomplete = [c.describe_pending() for c in collectors if c.pending]
        if incomplete:
            raise StatsError("MoE layers saw part of a forward only: " + "; ".join(incomplete))
    finally:
        hooks.release_weights()
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
        outputs_dtype: torch.dtype,
        max_chunk_bytes: int,
        hold_weights: bool,
    ) -> None:
        self.spec = spec
        self.stats = stats
        self.experts = experts
        self.outputs_dtype = outputs_dtype
        self.max_chunk_bytes = max_chunk_bytes
        self.hold_weights = hold_weights
        self.converted: ExpertWeights | None = None
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
            try:
                self._update(parts)
            finally:
                if not self.hold_weights:
                    self.converted = None

    def describe_pending(self) -> str:
        missing = sorted(self.required - set(self.pending))
        return f"layer {self.stats.layer} got {sorted(self.pending)}, missing {missing}"

    def _weights(self) -> ExpertWeights:
        """The layer's E experts in canonical layout and outputs_dtype, converted once (module docstring)."""
        if self.converted is None:
            self.converted = self.spec.module_expert_weights(self.experts).to(self.outputs_dtype)
        return self.converted

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
        experts = self._weights()
        per_token = experts.num_experts * (experts.hidden + 3 * experts.width) * experts.gate.element_size()
        token_chunk = max(1, self.max_chunk_bytes // per_token)
        for start in range(0, t, token_chunk):
            rows = slice(start, min(t, start + token_chunk))
            outputs = experts.forward(x[rows].to(self.outputs_dtype), self.spec.activation)  # [E, T_chunk, H]
            self.stats.update(
                probs[rows],
                weights[rows],
                indices[rows],
                outputs,
                None if shared_gate is None else shared_gate[rows],
            )
