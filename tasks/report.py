"""Stage `report`: the conversion's report page (+ PNG plots), and model registration.

The report is drawn by the one report renderer (moe2dense_platform/reporting: the same page
`moe2dense report RUN_ID` renders): lineage (source id, revision, snapshot / stats / plan / checkpoint
digests), the evaluation table (teacher, assembled student before distillation, distilled student:
held-out perplexity and downstream accuracy), the kept-expert map and the expert scores of the plan
(read back from the store), and the distillation loss / KL curves read back from the distill stage's
MLflow run. Published once to the artifact store (kind `report`); small (HTML + PNG + JSON), so its
`report` stage run also shows it under `report/`. Cached on the recipe digest and every result it
summarises.

`register_task` registers the final checkpoint in the MLflow Model Registry with lineage tags
(moe2dense_platform.tracking.register_dense_model): the model version's `source` is the checkpoint's store URI — the
checkpoint is not uploaded again — with the store's content address as a tag; a checkpoint already
registered under that name is not registered twice. Cached on checkpoint digest, model name and the
tracking URI (where it registers).
"""

from __future__ import annotations

from moe2dense_core.plan import ConversionPlan
from moe2dense_platform.reporting.data import (
    EvalRow,
    LabelledPlan,
    ReportData,
    conversion_kind,
    lineage_rows,
    plan_label,
)
from moe2dense_platform.reporting.render import render_report
from moe2dense_platform.reporting.runs import log_report, metric_curves
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_RECIPE_DIGEST,
    TAG_SOURCE_REVISION,
    Lineage,
    register_dense_model,
)
from tasks.publish import finish, publish_dir, record_inputs
from tasks.results import (
    CheckpointResult,
    PlanResult,
    RegistrationResult,
    ReportInputs,
    ReportResult,
    SourceResult,
)
from tasks.stage import stage


def conversion_report(inputs: ReportInputs, runtime: Runtime, parent_run_id: str) -> ReportData:
    """The report's values from the stage results: the stored plan, the evaluations, the distill run's curves."""
    source, plan = inputs.source, inputs.plan
    conversion = ConversionPlan.from_json(runtime.fetch_uri(plan.plan_uri).read_text(encoding="utf-8"))
    curves = []
    if inputs.distill_run_id:
        curves = metric_curves(runtime.client, runtime.client.get_run(inputs.distill_run_id), "distill")
    return ReportData(
        kind="conversion",
        title=inputs.recipe_name,
        run_id=parent_run_id,
        lineage=lineage_rows(
            source_model=source.model,
            source_revision=source.revision,
            snapshot_digest=source.snapshot_digest,
            stats_digest=plan.stats_digest,
            plan_digest=plan.plan_digest,
            checkpoint_digest=inputs.checkpoint.checkpoint_digest,
            checkpoint_uri=inputs.checkpoint.checkpoint_uri,
        ),
        evaluations=[
            EvalRow(
                label=e.label,
                kind=conversion_kind(e.label),
                perplexity=e.perplexity,
                kl_to_teacher=e.kl_to_teacher,
                mean_acc=e.downstream_mean_acc,
            )
            for e in inputs.evaluations
        ],
        plans=[LabelledPlan(label=plan_label(plan.config), plan=conversion)],
        curves=curves,
    )


@stage("report", result=ReportResult, key=lambda p: [p["recipe_digest"], p["results"]])
def report_task(results: ReportInputs, recipe_digest: str, parent_run_id: str) -> ReportResult:
    """Write the report, in its own stage run."""
    runtime = Runtime.from_environment()
    with runtime.stage(parent_run_id, "report") as run, runtime.scratch("report") as scratch:
        run.set_tags({TAG_RECIPE_DIGEST: recipe_digest})
        record_inputs(run, runtime, checkpoint=results.checkpoint.checkpoint_uri, plan=results.plan.plan_uri)
        rendered = render_report(conversion_report(results, runtime, parent_run_id), scratch / "report")
        uri = publish_dir(runtime, run, rendered.folder, kind="report", name="report")
        log_report(run, rendered.folder)  # small: browsable in the MLflow UI
        result = ReportResult(report_uri=uri, mlflow_run_id=run.run_id)
        finish(run, "report", result)
        return result


def recorded_revision(source: SourceResult) -> str:
    """What a registered version records as its source revision: the commit sha (hub), else the snapshot digest."""
    return source.revision or source.snapshot_digest


@stage(
    "register",
    result=RegistrationResult,
    key=lambda p: [
        p["checkpoint"].checkpoint_digest,
        p["model_name"],
        p["source"].model,
        recorded_revision(p["source"]),
        Settings().resolved_mlflow_tracking_uri,
    ],
)
def register_task(
    source: SourceResult,
    plan: PlanResult,
    checkpoint: CheckpointResult,
    model_name: str,
    flow_run_id: str | None,
    parent_run_id: str,
) -> RegistrationResult:
    """Register the stored checkpoint as a new version of `model_name`, or return the version that already
    holds this checkpoint converted from this source commit. A new commit of the source registers a new
    version even when its files (and so the checkpoint) did not change: the watcher recognises a release
    as converted by its commit sha (`tracking.converted_versions`)."""
    runtime = Runtime.from_environment()
    existing = runtime.client.search_model_versions(
        f"name = '{model_name}' and tags.`{TAG_CHECKPOINT_DIGEST}` = '{checkpoint.checkpoint_digest}'"
        f" and tags.`{TAG_SOURCE_REVISION}` = '{recorded_revision(source)}'"
    )
    if existing:
        return RegistrationResult(
            model_name=model_name,
            version=str(existing[0].version),
            checkpoint_uri=existing[0].source,
            mlflow_run_id=existing[0].run_id,
        )
    lineage = Lineage(
        source_model=source.model,
        source_revision=recorded_revision(source),
        shard_digests=source.file_digests,
        stats_digest=plan.stats_digest,
        plan_digest=plan.plan_digest,
        checkpoint_digest=checkpoint.checkpoint_digest,
        checkpoint_uri=checkpoint.checkpoint_uri,
        flow_run_id=flow_run_id,
    )
    with runtime.stage(parent_run_id, "register") as run:
        ref = runtime.store.ref_from_uri(checkpoint.checkpoint_uri)  # it is in the store: refuse if not
        version = register_dense_model(
            run, ref.sha256, model_name, lineage, description=f"moe2dense conversion of {source.model}"
        )
        return RegistrationResult(
            model_name=model_name,
            version=str(version.version),
            checkpoint_uri=checkpoint.checkpoint_uri,
            mlflow_run_id=run.run_id,
        )
