"""LayerStats: the float64 calibration accumulators of one MoE layer (METHOD.md step 1) [paper].

Notation: N calibration tokens; p(t) [E] router probabilities over all experts (spec.router_probs);
T(t) the teacher's selected top-k set; w_e(t) the applied routing weight (0 if e ∉ T(t));
f_e(x_t) [H] the output of expert e on token t — EVERY expert is run on EVERY token.

Field                      shape   accumulates
num_tokens                 []      N
counts                     [E]     n_e = Σ_t 1[e ∈ T(t)]
prob_sums                  [E]     Σ_t p_e(t)
prob_sums_selected         [E]     Σ_t p_e(t) · 1[e ∈ T(t)]
weight_sums                [E]     Σ_t w_e(t)
output_sq_norm_sums        [E]     Σ_t ‖f_e(x_t)‖²                      (all tokens)
gram                       [E, E]  G_ij = Σ_t ⟨f_i(x_t), f_j(x_t)⟩     (all tokens; diag = output_sq_norm_sums)
routed_norm_sums           [E]     Σ_{t: e∈T(t)} ‖f_e(x_t)‖
routed_weighted_norm_sums  [E]     Σ_{t: e∈T(t)} w_e(t) · ‖f_e(x_t)‖
router_prob_gram           [E, E]  P_ij = Σ_t p_i(t) · p_j(t)           (router-probability profiles)
shared_gate_sum            []      Σ_t sigmoid(shared_expert_gate(x_t)) (Qwen2-MoE; 0 elsewhere)

All fields are sums, so statistics of two disjoint token sets merge by addition.
`collected` (a StatsRequest, request.py) says which of them were accumulated: without expert_outputs
the output fields, without gram the Gram matrix stay 0 and a method that reads them is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moe2dense_core.errors import StatsError
from moe2dense_core.stats.request import EVERYTHING, StatsRequest

SUM_FIELDS = (
    "num_tokens",
    "counts",
    "prob_sums",
    "prob_sums_selected",
    "weight_sums",
    "output_sq_norm_sums",
    "gram",
    "routed_norm_sums",
    "routed_weighted_norm_sums",
    "router_prob_gram",
    "shared_gate_sum",
)
ID_FIELDS = ("layer", "num_experts", "top_k")
"""Integer identity of a LayerStats, stored as 0-d int64 tensors in `state_dict()`."""


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64)


@dataclass
class LayerStats:
    """Accumulators of one MoE layer with E experts, top-k routing (see module docstring)."""

    layer: int
    num_experts: int
    top_k: int
    num_tokens: torch.Tensor = field(default=None)  # type: ignore[assignment]
    counts: torch.Tensor = field(default=None)  # type: ignore[assignment]
    prob_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    prob_sums_selected: torch.Tensor = field(default=None)  # type: ignore[assignment]
    weight_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    output_sq_norm_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    gram: torch.Tensor = field(default=None)  # type: ignore[assignment]
    routed_norm_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    routed_weighted_norm_sums: torch.Tensor = field(default=None)  # type: ignore[assignment]
    router_prob_gram: torch.Tensor = field(default=None)  # type: ignore[assignment]
    shared_gate_sum: torch.Tensor = field(default=None)  # type: ignore[assignment]
    collected: StatsRequest = EVERYTHING

    def __post_init__(self) -> None:
        e = self.num_experts
        shapes = {
            "num_tokens": (),
            "counts": (e,),
            "prob_sums": (e,),
            "prob_sums_selected": (e,),
            "weight_sums": (e,),
            "output_sq_norm_sums": (e,),
            "gram": (e, e),
            "routed_norm_sums": (e,),
            "routed_weighted_norm_sums": (e,),
            "router_prob_gram": (e, e),
            "shared_gate_sum": (),
        }
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, _zeros(*shape))
            elif tuple(value.shape) != shape:
                raise ValueError(
                    f"LayerStats.{name} of layer {self.layer}: shape {tuple(value.shape)}, expected {shape}"
                )
            else:
                setattr(self, name, value.to(torch.float64))

    # ---- accumulation ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        probs: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_indices: torch.Tensor,
        expert_outputs: torch.Tensor | None = None,
        shared_gate: torch.Tensor | None = None,
    ) -> None:
        """Add T tokens to every collected accumulator (in place; reduced on the probabilities' device).

        probs [T, E] p(t); topk_weights [T, k] w over T(t); topk_indices [T, k] T(t) (distinct per token);
        expert_outputs [E, T, H] f_e(x_t) for every expert and token, given exactly when
        `collected.expert_outputs`; shared_gate [T] sigmoid gate or None.
        With S [T, E] the selection mask and W [T, E] the applied weights scattered from the top-k:
        counts += Σ_t S, prob_sums += Σ_t p, prob_sums_selected += Σ_t p⊙S, weight_sums += Σ_t W,
        router_prob_gram += pᵀp, shared_gate_sum += Σ_t gate; with the outputs, ν [E, T] = ‖f_e(x_t)‖:
        output_sq_norm_sums += Σ_t ν², routed_norm_sums += Σ_t νᵀ⊙S, routed_weighted_norm_sums += Σ_t νᵀ⊙W,
        and with `collected.gram`, gram += F Fᵀ with F = outputs as [E, T·H].
        ν and F Fᵀ are computed in the outputs' dtype (float32 outputs: float32 reductions over H and
        T·H), everything else and every accumulator in float64.
        """
        self._check_update_shapes(probs, topk_weights, topk_indices, expert_outputs, shared_gate)
        device = probs.device  # reduce where the inputs live, then add to the accumulators
        p = probs.to(torch.float64)
        idx = topk_indices.to(device=device, dtype=torch.long)
        w = topk_weights.to(device=device, dtype=torch.float64)
        t = p.shape[0]

        selected = torch.zeros(t, self.num_experts, dtype=torch.float64, device=device).scatter_(1, idx, 1.0)
        if t and not bool((selected.sum(dim=1) == self.top_k).all()):
            raise StatsError(f"layer {self.layer}: topk_indices repeat an expert within a token")
        applied = torch.zeros(t, self.num_experts, dtype=torch.float64, device=device).scatter_(1, idx, w)
        sums = {
            "num_tokens": torch.tensor(float(t), dtype=torch.float64),
            "counts": selected.sum(dim=0),
            "prob_sums": p.sum(dim=0),
            "prob_sums_selected": (p * selected).sum(dim=0),
            "weight_sums": applied.sum(dim=0),
            "router_prob_gram": p.T @ p,
        }
        if expert_outputs is not None:
            outputs = expert_outputs.to(device)
            norms = outputs.norm(dim=-1).to(torch.float64)  # [E, T]
            sums["output_sq_norm_sums"] = norms.square().sum(dim=1)
            sums["routed_norm_sums"] = (norms.T * selected).sum(dim=0)
            sums["routed_weighted_norm_sums"] = (norms.T * applied).sum(dim=0)
            if self.collected.gram:
                flat = outputs.reshape(self.num_experts, -1)  # [E, T·H]
                sums["gram"] = flat @ flat.T
        if shared_gate is not None:
            sums["shared_gate_sum"] = shared_gate.to(device=device, dtype=torch.float64).sum()
        for name, value in sums.items():
            accumulator = getattr(self, name)
            accumulator += value.to(device=accumulator.device, dtype=torch.float64)

    def _check_update_shapes(
        self,
        probs: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_indices: torch.Tensor,
        expert_outputs: torch.Tensor | None,
        shared_gate: torch.Tensor | None,
    ) -> None:
        e, k = self.num_experts, self.top_k
        where = f"LayerStats.update (layer {self.layer}, E={e}, k={k})"
        if probs.dim() != 2 or probs.shape[1] != e:
            raise StatsError(f"{where}: probs has shape {tuple(probs.shape)}, expected [T, {e}]")
        t = probs.shape[0]
        for name, tensor in (("topk_weights", topk_weights), ("topk_indices", topk_indices)):
            if tuple(tensor.shape) != (t, k):
                raise StatsError(f"{where}: {name} has shape {tuple(tensor.shape)}, expected [{t}, {k}]")
        if expert_outputs is not None and (
            expert_outputs.dim() != 3 or tuple(expert_outputs.shape[:2]) != (e, t)
        ):
            raise StatsError(
                f"{where}: expert_outputs has shape {tuple(expert_outputs.shape)}, expected [{e}, {t}, H]"
            )
        if (expert_outputs is not None) != self.collected.expert_outputs:
            given = "given" if expert_outputs is not None else "missing"
            raise StatsError(f"{where}: expert_outputs {given}, but the layer collects {self.collected}")
        if shared_gate is not None and tuple(shared_gate.shape) != (t,):
            raise StatsError(f"{where}: shared_gate has shape {tuple(shared_gate.shape)}, expected [{t}]")
        if topk_indices.is_floating_point() or topk_indices.is_complex():
            raise StatsError(f"{where}: topk_indices must be integer, got {topk_indices.dtype}")
        if t and (int(topk_indices.min()) < 0 or int(topk_indices.max()) >= e):
            raise StatsError(
                f"{where}: topk_indices range [{int(topk_indices.min())}, {int(topk_indices.max())}] "
                f"is outside [0, {e - 1}]"
            )

    # ---- combination and serialisation ------------------------------------------------------------
    def merge(self, other: LayerStats) -> LayerStats:
        """A new LayerStats holding the statistics of both token sets (field-wise sum; inputs untouched)."""
        mine = (self.layer, self.num_experts, self.top_k, self.collected)
        theirs = (other.layer, other.num_experts, other.top_k, other.collected)
        if mine != theirs:
            raise StatsError(
                f"LayerStats.merge: (layer, num_experts, top_k, collected) differ: {mine} vs {theirs}"
            )
        summed = {
            name: getattr(self, name) + getattr(other, name).to(getattr(self, name).device)
            for name in SUM_FIELDS
        }
        return LayerStats(self.layer, self.num_experts, self.top_k, **summed, collected=self.collected)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every accumulator (float64) plus `layer`, `num_experts`, `top_k` as 0-d int64 tensors."""
        state = {name: torch.tensor(getattr(self, name), dtype=torch.int64) for name in ID_FIELDS}
        state.update({name: getattr(self, name).detach().clone() for name in SUM_FIELDS})
        return state

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], collected: StatsRequest = EVERYTHING
    ) -> LayerStats:
        """Inverse of `state_dict()` for statistics collected with `collected` (ExpertStats keeps it in its
        metadata); the error names missing, unexpected or misshapen entries."""
        expected = set(ID_FIELDS) | set(SUM_FIELDS)
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise StatsError(f"LayerStats state dict: missing {missing}, unexpected {unexpected}")
        ids = {name: int(state[name]) for name in ID_FIELDS}
        try:
            return cls(**ids, **{name: state[name] for name in SUM_FIELDS}, collected=collected)
        except ValueError as exc:
            raise StatsError(f"LayerStats state dict: {exc}") from None
