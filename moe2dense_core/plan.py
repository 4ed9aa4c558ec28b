"""ConversionPlan: every decision of a conversion, per layer, as a serialisable value.

A plan is a pure function of statistics and a PlanConfig (plus expert weights for `weight_cluster`),
and assembling is a pure function of plan + teacher weights. Plans round-trip through JSON and
carry a `schema_version`; a plan of any other schema version is refused on load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moe2dense_core.arch import MoEDims, get_spec
from moe2dense_core.errors import PlanError
from moe2dense_core.grouping import ExpertWeightsFn, GroupingRequest, get_grouper, score_weighted
from moe2dense_core.scaling import get_scaling, shared_scale
from moe2dense_core.schema import check_schema_version
from moe2dense_core.scoring import get_scorer, rank_experts, select_top_k
from moe2dense_core.stats.layer_stats import LayerStats

if TYPE_CHECKING:
    from moe2dense_core.stats.expert_stats import ExpertStats

PLAN_SCHEMA_VERSION = 1

ScorerName = Literal["sf", "pp", "cp", "ean", "reap", "acp", "do_acp", "random"]
GrouperName = Literal["prune", "weight_cluster", "output_cluster", "router_cluster", "score_balanced"]
ScalingName = Literal["uniform", "proportional"]


class PlanConfig(BaseModel):
    """What to decide: scorer, number of kept experts K, grouper, down-projection scaling.

    num_selected K: experts kept per layer (same K in every layer [paper]); None = k (pure pruning).
    num_groups k: dense blocks per layer; None = the teacher's top-k.
    router_mass: with `uniform`, multiply c_g by the mean applied routing mass [defined here].
    do_acp_exchange: run Fedorov exchange from the greedy and top-K-by-acp starts [defined here].
    do_acp_ridge: λ in log det(M_S + λI); None = mean(diag M)/k [defined here].
    do_acp_exhaustive_limit: search all K-subsets exactly when C(E, K) is at most this [defined here].
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
    do_acp_exhaustive_limit: int = Field(default=20_000, ge=0)
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
    teacher dense layer is wider; narrower blocks are zero-padded, which is exact);
    stats_digest: ExpertStats.digest() of the statistics the plan was built from (None for a plan
    written by hand).
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

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_schema(cls, version: object) -> int:
        """A plan of another schema version is refused (PlanError) before any other field is trusted."""
        return check_schema_version(version, PLAN_SCHEMA_VERSION, "ConversionPlan", PlanError)

    def to_json(self) -> str:
        """The plan as indented JSON (what `from_json` reads back)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> ConversionPlan:
        """Parse and validate a plan written by `to_json`."""
        return cls.model_validate_json(text)

    def digest(self) -> str:
        """sha256 of the canonical (sorted-key, compact) JSON of the plan."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# ---- building a plan ------------------------------------------------------------------------------


class PlanSizes(NamedTuple):
    """The resolved sizes of a plan: K kept experts and k groups (dense blocks) per layer."""

    num_selected: int
    num_groups: int


def validate_plan_config(config: PlanConfig, num_experts: int, top_k: int) -> PlanSizes:
    """Resolve K and k from the config and the teacher's E and top-k; PlanError before any work.

    k = config.num_groups or top_k, 1 ≤ k ≤ E; K = config.num_selected or k, k ≤ K ≤ E;
    `prune` needs K = k; `router_mass` applies only to `uniform` scaling.
    """
    num_groups = config.num_groups if config.num_groups is not None else top_k
    if not 1 <= num_groups <= num_experts:
        raise PlanError(f"num_groups: {num_groups} dense blocks is outside [1, {num_experts}] (E experts)")
    num_selected = config.num_selected if config.num_selected is not None else num_groups
    if num_selected < num_groups:
        raise PlanError(
            f"num_selected: K = {num_selected} < k = {num_groups} (each of the k groups needs at least one "
            "expert; k is the teacher's top-k unless num_groups is set)"
        )
    if num_selected > num_experts:
        raise PlanError(f"num_selected: K = {num_selected} > E = {num_experts}, the number of experts")
    if config.grouping == "prune" and num_selected != num_groups:
        raise PlanError(
            f"num_selected: grouping 'prune' keeps each expert unmerged, so K must equal k = {num_groups} "
            f"(got {num_selected}); choose a merging grouper for K > k"
        )
    if config.router_mass and config.scaling != "uniform":
        raise PlanError(f"router_mass: applies only to scaling='uniform', not {config.scaling!r}")
    return PlanSizes(num_selected=num_selected, num_groups=num_groups)


def build_plan(
    stats: ExpertStats, config: PlanConfig, *, expert_weights: ExpertWeightsFn | None = None
) -> ConversionPlan:
    """Every conversion decision from calibration statistics: a pure function.

    Per MoE layer: score → select K (top-K, or the scorer's own set) → group into k → score-weighted
    merge weights → down-projection scales c_g → shared-expert scale. expert_weights(layer) gives the
    layer's E experts in canonical layout; only `weight_cluster` needs it.
    target_width = max(k·I + shared_width, dense_width of the teacher's dense layers).
    Raises PlanError (or the spec's error) before any scoring when config, statistics and model disagree.
    """
    spec = get_spec(stats.model_type)
    dims = spec.dims(stats.config)
    sizes = validate_plan_config(config, dims.num_experts, dims.top_k)
    if config.grouping == "weight_cluster" and expert_weights is None:
        raise PlanError(
            "grouping 'weight_cluster' needs expert weights: pass build_plan(..., expert_weights=fn)"
        )
    _check_stats_fit_model(stats, dims)
    layers = [
        _plan_layer(
            stats.layers[index],
            config,
            sizes,
            shared_scale=shared_scale(spec, dims.shared_width, stats.layers[index]),
            expert_weights=expert_weights,
        )
        for index in sorted(stats.layers)
    ]
    return ConversionPlan(
        model_type=stats.model_type,
        num_experts=stats.num_experts,
        top_k=stats.top_k,
        expert_width=dims.expert_width,
        target_width=max(sizes.num_groups * dims.expert_width + dims.shared_width, dims.dense_width),
        config=config,
        layers=layers,
        stats_digest=stats.digest(),
    )


def _check_stats_fit_model(stats: ExpertStats, dims: MoEDims) -> None:
    """The statistics describe this config's model: same E, top-k, exactly its MoE layers, tokens seen."""
    if (stats.num_experts, stats.top_k) != (dims.num_experts, dims.top_k):
        raise PlanError(
            f"statistics (num_experts={stats.num_experts}, top_k={stats.top_k}) disagree with the config "
            f"(num_experts={dims.num_experts}, top_k={dims.top_k})"
        )
    if sorted(stats.layers) != sorted(dims.moe_layers):
        raise PlanError(
            f"statistics cover layers {sorted(stats.layers)}, but the model's MoE layers are {sorted(dims.moe_layers)}"
        )
    for index, layer in stats.layers.items():
        if (layer.layer, layer.num_experts, layer.top_k) != (index, stats.num_experts, stats.top_k):
            raise PlanError(
                f"LayerStats at key {index}: (layer, num_experts, top_k) = ({layer.layer}, {layer.num_experts}, "
                f"{layer.top_k}), expected ({index}, {stats.num_experts}, {stats.top_k})"
            )
        if not float(layer.num_tokens) > 0:
            raise PlanError(
                f"LayerStats.num_tokens of layer {index} is {float(layer.num_tokens)}: calibrate before planning"
            )


def _plan_layer(
    stats: LayerStats,
    config: PlanConfig,
    sizes: PlanSizes,
    *,
    shared_scale: float | None,
    expert_weights: ExpertWeightsFn | None,
) -> LayerPlan:
    """Score, select, group, weight and scale one MoE layer."""
    scorer = get_scorer(config.scoring)
    result = scorer(stats, sizes.num_selected, **_options(scorer.options, config))
    kept = result.selected if result.selected is not None else select_top_k(result.scores, sizes.num_selected)
    if (
        len(kept) != sizes.num_selected
        or len(set(kept)) != len(kept)
        or not all(0 <= e < stats.num_experts for e in kept)
    ):
        raise PlanError(
            f"scorer {config.scoring!r} on layer {stats.layer}: selected {kept}, not {sizes.num_selected} experts"
        )
    groups = get_grouper(config.grouping)(
        GroupingRequest(stats, rank_experts(result.scores, kept), sizes.num_groups, expert_weights)
    )
    scaling = get_scaling(config.scaling)
    return LayerPlan(
        layer=stats.layer,
        kept=sorted(kept),
        scores=result.scores.tolist(),
        groups=groups,
        merge_weights=score_weighted(groups, result.scores),
        scales=scaling(stats, groups, **_options(scaling.options, config)),
        shared_scale=shared_scale,
    )


def _options(fields: Mapping[str, str], config: PlanConfig) -> dict[str, object]:
    """Keyword options of a method from the PlanConfig fields its registry entry names."""
    return {option: getattr(config, field_name) for option, field_name in fields.items()}
