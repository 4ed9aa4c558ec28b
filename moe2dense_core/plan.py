"""ConversionPlan: every decision of a conversion, per layer, as a serialisable value.

A plan is a pure function of statistics and a PlanConfig (plus expert weights for a grouper that reads
them), and assembling is a pure function of plan + teacher weights. PlanConfig chooses one registered
method of each kind, scoring/, grouping/ and scaling/, with its options (moe2dense_core/registry.py):
the registries are the only list of names. Plans round-trip through JSON and carry a `schema_version`;
a version-1 plan is upgraded on load (plan_v1.py), any other version is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moe2dense_core.arch import MoEDims, get_spec
from moe2dense_core.errors import PlanError
from moe2dense_core.grouping import GROUPERS, ExpertWeightsFn, GroupingRequest, get_grouper, score_weighted
from moe2dense_core.io.digests import json_sha256
from moe2dense_core.plan_v1 import refuse_flat_options, upgrade_v1_plan
from moe2dense_core.scaling import SCALINGS, get_scaling, shared_scale
from moe2dense_core.schema import check_schema_version
from moe2dense_core.scoring import SCORERS, get_scorer, rank_experts
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import ROUTER_ONLY, StatsRequest

if TYPE_CHECKING:
    from moe2dense_core.stats.expert_stats import ExpertStats

PLAN_SCHEMA_VERSION = 2

ScorerChoice = SCORERS.choice
GrouperChoice = GROUPERS.choice
ScalingChoice = SCALINGS.choice


class PlanConfig(BaseModel):
    """What to decide: scorer, number of kept experts K, grouper, number of groups k, down-projection scaling.

    scoring / grouping / scaling: a registered method, written as its name (`do_acp`) or as its name and
    options (`{name: do_acp, exhaustive_limit: 500}`); read as the method's MethodOptions model.
    num_selected K: experts kept per layer (same K in every layer [paper]); None = k (pure pruning).
    num_groups k: dense blocks per layer; None = the teacher's top-k.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scoring: ScorerChoice = Field("do_acp", validate_default=True)
    num_selected: int | None = Field(default=None, ge=1)
    grouping: GrouperChoice = Field("prune", validate_default=True)
    scaling: ScalingChoice = Field("uniform", validate_default=True)
    num_groups: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _options_belong_to_methods(cls, data: Any) -> Any:
        """A flat option of plan schema 1 (`router_mass: true`) is refused, naming its new place."""
        refuse_flat_options(data)
        return data


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

    @model_validator(mode="before")
    @classmethod
    def _upgrade_version_1(cls, data: Any) -> Any:
        """A version-1 plan (flat method options) read as version 2 (plan_v1.py)."""
        if isinstance(data, dict) and type(data.get("schema_version")) is int and data["schema_version"] == 1:
            return upgrade_v1_plan(data)
        return data

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
        return json_sha256(self.model_dump(mode="json"))


# ---- building a plan ------------------------------------------------------------------------------


class PlanSizes(NamedTuple):
    """The resolved sizes of a plan: K kept experts and k groups (dense blocks) per layer."""

    num_selected: int
    num_groups: int


def resolve_sizes(config: PlanConfig, top_k: int) -> PlanSizes:
    """k = config.num_groups or the teacher's top-k; K = config.num_selected or k (not yet validated)."""
    num_groups = config.num_groups if config.num_groups is not None else top_k
    num_selected = config.num_selected if config.num_selected is not None else num_groups
    return PlanSizes(num_selected=num_selected, num_groups=num_groups)


def grouping_fits(config: PlanConfig, top_k: int) -> bool:
    """K = k, or the grouper merges: one that keeps every expert unmerged (`prune`) makes K groups of one."""
    sizes = resolve_sizes(config, top_k)
    return sizes.num_selected == sizes.num_groups or get_grouper(config.grouping.name).merges


def validate_plan_config(config: PlanConfig, num_experts: int, top_k: int) -> PlanSizes:
    """The sizes of the plan for a teacher with E experts and top-k; PlanError before any work.

    The one check of K and k: 1 ≤ k ≤ E, k ≤ K ≤ E, and K = k for a grouper that does not merge.
    """
    sizes = resolve_sizes(config, top_k)
    num_selected, num_groups = sizes
    if not 1 <= num_groups <= num_experts:
        raise PlanError(f"num_groups: {num_groups} dense blocks is outside [1, {num_experts}] (E experts)")
    if num_selected < num_groups:
        raise PlanError(
            f"num_selected: K = {num_selected} < k = {num_groups} (each of the k groups needs at least one "
            "expert; k is the teacher's top-k unless num_groups is set)"
        )
    if num_selected > num_experts:
        raise PlanError(f"num_selected: K = {num_selected} > E = {num_experts}, the number of experts")
    if not grouping_fits(config, top_k):
        raise PlanError(
            f"num_selected: grouping {config.grouping.name!r} keeps each expert unmerged, so K must equal "
            f"k = {num_groups} (got {num_selected}); choose a merging grouper for K > k"
        )
    return sizes


def stats_request_for(configs: PlanConfig | Iterable[PlanConfig]) -> StatsRequest:
    """The statistics a plan (or every plan of a sweep grid) reads: the union of what each config's scorer
    and grouper declare (`needs`); router statistics alone when none reads more."""
    request = ROUTER_ONLY
    for config in [configs] if isinstance(configs, PlanConfig) else configs:
        request = request.union(get_scorer(config.scoring.name).needs).union(
            get_grouper(config.grouping.name).needs
        )
    return request


def build_plan(
    stats: ExpertStats, config: PlanConfig, *, expert_weights: ExpertWeightsFn | None = None
) -> ConversionPlan:
    """Every conversion decision from calibration statistics: a pure function.

    Per MoE layer: score → select K (top-K, or the scorer's own set) → group into k → score-weighted
    merge weights → down-projection scales c_g → shared-expert scale. expert_weights(layer) gives the
    layer's E experts in canonical layout; only a grouper that reads weights (`weight_cluster`) needs it.
    target_width = max(k·I + shared_width, dense_width of the teacher's dense layers).
    Raises PlanError (or the spec's error) before any scoring when config, statistics and model disagree.
    """
    spec = get_spec(stats.model_type)
    dims = spec.dims(stats.config)
    sizes = validate_plan_config(config, dims.num_experts, dims.top_k)
    get_grouper(config.grouping.name).require_weights(expert_weights)
    stats.collected.require(stats_request_for(config), f"plan {config.scoring} + {config.grouping}")
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
    """Score and select, group, weight and scale one MoE layer, each by its chosen method and options."""
    scored = get_scorer(config.scoring.name)(stats, sizes.num_selected, config.scoring)
    ranked = rank_experts(scored.scores, scored.selected)
    groups = get_grouper(config.grouping.name)(
        GroupingRequest(stats, ranked, sizes.num_groups, expert_weights), config.grouping
    )
    return LayerPlan(
        layer=stats.layer,
        kept=scored.selected,
        scores=scored.scores.tolist(),
        groups=groups,
        merge_weights=score_weighted(groups, scored.scores),
        scales=get_scaling(config.scaling.name)(stats, groups, config.scaling),
        shared_scale=shared_scale,
    )
