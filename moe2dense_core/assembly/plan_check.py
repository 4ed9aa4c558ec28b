"""Does a ConversionPlan fit a checkpoint? Checked from config and plan alone, before reading any weight.

A plan fits when: it was made for this model_type, E, k and expert width I; it has exactly one
LayerPlan per MoE layer of the checkpoint; in each layer the kept experts are distinct indices in
[0, E), the groups partition them, every group has one merge weight per member (non-negative,
summing to 1) and one scale, a shared_scale is given iff the model has shared experts; and the
target width holds every layer:
target_width ≥ (#groups)·I + shared_width for MoE layers and ≥ dense_width for teacher dense layers.
"""

from __future__ import annotations

from moe2dense_core.arch.spec import MoEDims
from moe2dense_core.assembly.merge import MERGE_WEIGHT_SUM_TOLERANCE
from moe2dense_core.errors import PlanError
from moe2dense_core.plan import ConversionPlan, LayerPlan


def check_plan_fits(plan: ConversionPlan, model_type: str, dims: MoEDims) -> None:
    """Raise PlanError naming the plan field that disagrees with the checkpoint (see module docstring)."""
    expected = {
        "model_type": model_type,
        "num_experts": dims.num_experts,
        "top_k": dims.top_k,
        "expert_width": dims.expert_width,
    }
    for field, value in expected.items():
        if getattr(plan, field) != value:
            raise PlanError(
                f"plan.{field} is {getattr(plan, field)!r} but the checkpoint has {value!r}: "
                "the plan was made for another model"
            )
    planned = [layer_plan.layer for layer_plan in plan.layers]
    if sorted(planned) != sorted(dims.moe_layers) or len(set(planned)) != len(planned):
        raise PlanError(
            f"plan.layers covers layers {sorted(planned)} but the checkpoint's MoE layers are {list(dims.moe_layers)}"
        )
    needed = dims.dense_width if len(dims.moe_layers) < dims.num_layers else 0
    for layer_plan in plan.layers:
        _check_layer(layer_plan, dims)
        needed = max(needed, len(layer_plan.groups) * dims.expert_width + dims.shared_width)
    if plan.target_width < needed:
        raise PlanError(
            f"plan.target_width is {plan.target_width} but the widest student layer needs {needed}"
        )


def _check_layer(layer_plan: LayerPlan, dims: MoEDims) -> None:
    where = f"plan layer {layer_plan.layer}"
    kept = layer_plan.kept
    out_of_range = [e for e in kept if not 0 <= e < dims.num_experts]
    if out_of_range:
        raise PlanError(f"{where}: kept experts {out_of_range} are out of range [0, {dims.num_experts})")
    if len(set(kept)) != len(kept):
        raise PlanError(f"{where}: kept experts {kept} contain duplicates")
    grouped = [e for group in layer_plan.groups for e in group]
    if sorted(grouped) != sorted(kept) or any(not group for group in layer_plan.groups):
        raise PlanError(f"{where}: groups {layer_plan.groups} are not a partition of the kept experts {kept}")
    if [len(w) for w in layer_plan.merge_weights] != [len(g) for g in layer_plan.groups]:
        raise PlanError(
            f"{where}: merge_weights {layer_plan.merge_weights} do not match groups {layer_plan.groups}"
        )
    for weights in layer_plan.merge_weights:
        if min(weights) < 0 or abs(sum(weights) - 1.0) > MERGE_WEIGHT_SUM_TOLERANCE:
            raise PlanError(f"{where}: merge_weights {weights} must be non-negative and sum to 1")
    if len(layer_plan.scales) != len(layer_plan.groups):
        raise PlanError(f"{where}: {len(layer_plan.scales)} scales for {len(layer_plan.groups)} groups")
    has_shared = dims.shared_width > 0
    if has_shared != (layer_plan.shared_scale is not None):
        raise PlanError(
            f"{where}: shared_scale is {layer_plan.shared_scale} but the checkpoint "
            + ("has shared experts" if has_shared else "has no shared experts")
        )
