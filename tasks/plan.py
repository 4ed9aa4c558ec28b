"""Stage `plan`: the ConversionPlan from statistics and a PlanConfig (METHOD.md steps 2-4).

Cheap and pure: score experts, select K, group, merge weights, scales. The plan JSON is published once
(kind `plan`, small: also browsable on the MLflow run); the summary (kept experts per layer, target
width) rides in the result. Cached on stats digest + snapshot digest (weight_cluster reads expert
weights) + PlanConfig, so a sweep re-plans only what changed.
`weight_cluster` reads the layer's expert weights from the teacher snapshot on demand.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack

from moe2dense_core.plan import ConversionPlan, PlanConfig, build_plan
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_PLAN_DIGEST, TAG_STATS_DIGEST
from tasks.publish import finish, publish_text, record_inputs
from tasks.results import CalibrationResult, PlanResult, SourceResult
from tasks.source import open_source
from tasks.stage import stage


def make_plan(
    source: SourceResult, calibration: CalibrationResult, config: PlanConfig, runtime: Runtime
) -> ConversionPlan:
    """build_plan on the stored statistics; the teacher snapshot is re-opened (open_source) only if the
    grouping reads expert weights, on the first read."""
    stats = ExpertStats.load(runtime.fetch_uri(calibration.stats_uri))
    with ExitStack() as stack:
        teacher = functools.cache(lambda: stack.enter_context(open_source(source)))
        return build_plan(stats, config, expert_weights=lambda layer: teacher().expert_weights(layer))


@stage(
    "plan",
    result=PlanResult,
    key=lambda p: [p["calibration"].stats_digest, p["source"].snapshot_digest, p["plan"]],
    lineage={TAG_STATS_DIGEST: "stats_digest", TAG_PLAN_DIGEST: "plan_digest"},
)
def plan_task(
    source: SourceResult, calibration: CalibrationResult, plan: PlanConfig, parent_run_id: str
) -> PlanResult:
    runtime = Runtime.from_environment()
    with runtime.stage(parent_run_id, "plan", {"plan": plan}) as run:
        record_inputs(run, runtime, stats=calibration.stats_uri)
        conversion = make_plan(source, calibration, plan, runtime)
        plan_uri = publish_text(runtime, run, conversion.to_json(), kind="plan", name="plan.json")
        run.log_metrics({"plan/target_width": float(conversion.target_width)})
        result = PlanResult(
            plan_uri=plan_uri,
            plan_digest=conversion.digest(),
            stats_digest=calibration.stats_digest,
            config=plan,
            target_width=conversion.target_width,
            kept_experts={layer.layer: layer.kept for layer in conversion.layers},
            mlflow_run_id=run.run_id,
        )
        finish(run, "plan", result)
        return result
