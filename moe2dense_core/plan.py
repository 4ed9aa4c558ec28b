"""ConversionPlan: every decision of a conversion, per layer, as a serialisable value.

A plan is a pure function of statistics and a PlanConfig (plus expert weights for `weight_cluster`),
and assembling is a pure function of plan + teacher weights. Plans round-trip through JSON and
carry a `schema_version`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PLAN_SCHEMA_VERSION = 1

ScorerName = Literal["sf", "pp", "cp", "ean", "reap", "acp", "do_acp", "random"]
GrouperName = Literal["prune", "weight_cluster", "output_cluster", "router_cluster", "score_balanced"]
ScalingName = Literal["uniform", "proportional"]


class PlanConfig(BaseModel):
    """What to decide: scorer, number of kept experts K, grouper, down-projection scaling.

    num_selected K: experts kept per layer (same K in every layer [paper]); None = k (pure pruning).
    num_groups k: dense blocks per layer; None = the teacher's top-k.
    router_mass: with `uniform`, multiply c_g by the mean applied routing mass [defined here].
    do_acp_exchange: run Fedorov exchange after greedy selection [defined here].
    do_acp_ridge: λ in log det(M_S + λI); None = mean(diag M)/k [defined here].
    seed: used only by the `random` scorer (the random-selection control).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scoring: ScorerName = "do_acp"
    num_selected: int | None = Field(default=None, ge=1)
    grouping: GrouperName = "prune"
    scaling: ScalingName = "uniform"
    num_groups: int | None = Field(default=None, ge=1)
    router_mass: bool = False
    do_acp_exchange: bool = True
    do_acp_ridge: float | None = Field(default=None, gt=0)
    seed: int = 0


class LayerPlan(BaseModel):
    """The decision for one MoE layer.

    kept: the K selected expert indices; scores: the scorer's value for every expert [E];
    groups: k lists partitioning `kept`; merge_weights: per group, weights summing to 1 for
    score-weighted averaging of its members; scales: c_g per group (down-projection scale);
    shared_scale: constant applied to shared experts' down projection (None = no shared experts).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int
    kept: list[int]
    scores: list[float]
    groups: list[list[int]]
    merge_weights: list[list[float]]
    scales: list[float]
    shared_scale: float | None = None


class ConversionPlan(BaseModel):
    """The whole conversion: teacher identity, sizes, config used and one LayerPlan per MoE layer.

    target_width: the dense FFN width of every student layer (k·I + shared width, or larger where a
    teacher dense layer is wider; narrower blocks are zero-padded, which is exact).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = PLAN_SCHEMA_VERSION
    model_type: str
    num_experts: int
    top_k: int
    expert_width: int
    target_width: int
    config: PlanConfig
    layers: list[LayerPlan]
    stats_digest: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ConversionPlan:
        return cls.model_validate_json(text)

    def digest(self) -> str:
        """sha256 of the canonical (sorted-key, compact) JSON of the plan."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
