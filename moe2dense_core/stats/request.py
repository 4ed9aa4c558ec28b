"""StatsRequest: which calibration statistics a pass collects, so a plan pays only for what it reads.

Router statistics are always collected: they cost one softmax and a few [T, E] reductions per layer
(num_tokens, counts, prob_sums, prob_sums_selected, weight_sums, router_prob_gram, shared_gate_sum).
The rest needs every expert run on every token, ≈ E/k times the teacher's own expert compute:

    flag            LayerStats fields                                              extra cost per T tokens
    expert_outputs  output_sq_norm_sums, routed_norm_sums, routed_weighted_norm_sums  6·E·T·H·I flops
    gram            gram (G = F Fᵀ over the outputs; implies expert_outputs)          + 2·E²·T·H flops

Each scorer and grouper declares the request it reads (`needs=` at registration, default EVERYTHING
for a method that does not say); `plan.stats_request_for(configs)` is the union over a plan or a sweep
grid. A LayerStats records what it was collected with (`LayerStats.collected`), and a method asked to
run on statistics that lack what it needs is refused, naming the missing statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe2dense_core.errors import StatsError

OUTPUT_FIELDS = ("output_sq_norm_sums", "routed_norm_sums", "routed_weighted_norm_sums")
"""LayerStats fields filled only when `expert_outputs` is requested."""
GRAM_FIELDS = ("gram",)
"""LayerStats fields filled only when `gram` is requested."""


@dataclass(frozen=True)
class StatsRequest:
    """Which statistics beyond the router's to collect (see module docstring)."""

    expert_outputs: bool = True
    gram: bool = True

    def __post_init__(self) -> None:
        if self.gram and not self.expert_outputs:
            raise StatsError(
                "StatsRequest: gram=True needs expert_outputs=True (G is a product of the outputs)"
            )

    def union(self, other: StatsRequest) -> StatsRequest:
        """Everything either request asks for."""
        return StatsRequest(self.expert_outputs or other.expert_outputs, self.gram or other.gram)

    def covers(self, needed: StatsRequest) -> bool:
        """Whether statistics collected with this request hold everything `needed` asks for."""
        return not self.missing(needed)

    def missing(self, needed: StatsRequest) -> list[str]:
        """The flags `needed` asks for that this request lacks, each with the fields it stands for."""
        lacking = []
        if needed.expert_outputs and not self.expert_outputs:
            lacking.append(f"expert_outputs ({', '.join(OUTPUT_FIELDS)})")
        if needed.gram and not self.gram:
            lacking.append("gram (E×E Gram matrix of the expert outputs)")
        return lacking

    def require(self, needed: StatsRequest, who: str) -> None:
        """StatsError naming `who` and every missing statistic when these lack what `needed` asks for."""
        lacking = self.missing(needed)
        if lacking:
            raise StatsError(
                f"{who} needs {' and '.join(lacking)}, but the calibration collected {self} only; "
                f"collect with {needed!r} (or request everything)"
            )

    def to_json(self) -> dict[str, bool]:
        return {"expert_outputs": self.expert_outputs, "gram": self.gram}

    @classmethod
    def from_json(cls, data: object, where: str) -> StatsRequest:
        """Read `to_json()` back; StatsError naming `where` on anything else."""
        keys = {"expert_outputs", "gram"}
        if not isinstance(data, dict) or set(data) != keys or not all(type(v) is bool for v in data.values()):
            raise StatsError(
                f"{where}: `collected` must be {{expert_outputs: bool, gram: bool}}, got {data!r}"
            )
        return cls(**data)

    def __str__(self) -> str:
        flags = [name for name, on in self.to_json().items() if on]
        return "router statistics" + "".join(f" + {flag}" for flag in flags)


EVERYTHING = StatsRequest(expert_outputs=True, gram=True)
ROUTER_ONLY = StatsRequest(expert_outputs=False, gram=False)
EXPERT_OUTPUTS = StatsRequest(expert_outputs=True, gram=False)
