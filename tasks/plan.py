"""Stage `plan`: the ConversionPlan from statistics and a PlanConfig (METHOD.md steps 2-4).

Cheap and pure: score experts, select K, group, merge weights, scales. The plan JSON goes to the
artifact store (kind `plan`) and MLflow; the summary (kept experts per layer, target width) rides in
the result. Cached on stats digest + snapshot digest + PlanConfig, so a sweep re-plans only what changed.
`weight_cluster` reads the layer's expert weights from the teacher snapshot on demand.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack

from prefect import task
from pydantic import BaseModel, ConfigDict

from moe2dense_core.plan import ConversionPlan, PlanConfig, build_plan
from moe2dense_core.stats.expert_stats import ExpertStats
from tasks.caching import plan_key
from tasks.calibrate import CalibrationResult
from tasks.result_storage import RESULT_STORAGE
from tasks.runtime import Runtime
from tasks.source import SourceResult, open_source


class PlanResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    plan_uri: str
    plan_digest: str
    stats_digest: str
    config: PlanConfig
    target_width: int
    kept_experts: dict[int, list[int]]
    mlflow_run_id: str


def make_plan(
    source: SourceResult, calibration: CalibrationResult, config: PlanConfig, runtime: Runtime
) -> ConversionPlan:
    """build_plan on the stored statistics; the teacher snapshot is re-opened (open_source) only if the
    grouping reads expert weights, on the first read."""
    stats = ExpertStats.load(runtime.fetch_uri(calibration.stats_uri))
    with ExitStack() as stack:
        teacher = functools.cache(lambda: stack.enter_context(open_source(source)))
        return build_plan(stats, config, expert_weights=lambda layer: teacher().expert_weights(layer))


@task(name="plan", cache_key_fn=plan_key, persist_result=True, result_storage=RESULT_STORAGE)
def plan_task(
    source: SourceResult, calibration: CalibrationResult, plan: PlanConfig, parent_run_id: str
) -> PlanResult:
    runtime = Runtime.from_environment()
    with runtime.stage(parent_run_id, "plan", {"plan": plan}) as run:
        conversion = make_plan(source, calibration, plan, runtime)
        digest = conversion.digest()
        ref = runtime.store.put_bytes(conversion.to_json().encode(), kind="plan", name="plan.json")
        run.log_text(conversion.to_json(), "plan/plan.json")
        run.set_tags({"moe2dense.stats_digest": calibration.stats_digest, "moe2dense.plan_digest": digest})
        run.log_metrics({"plan/target_width": float(conversion.target_width)})
        return PlanResult(
            plan_uri=runtime.store.uri_for(ref),
            plan_digest=digest,
            stats_digest=calibration.stats_digest,
            config=plan,
            target_width=conversion.target_width,
            kept_experts={layer.layer: layer.kept for layer in conversion.layers},
            mlflow_run_id=run.run_id,
        )
