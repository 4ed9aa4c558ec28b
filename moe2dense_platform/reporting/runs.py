"""A run's report from its MLflow records, and the rendered report back onto the run.

    data = gather_report(runtime, run_id)   # ReportError for a stage run or a record that is missing
    log_report(logger, folder)              # each file of the folder as the run's artifact `report/<name>`

A parent run's kind is its `moe2dense.flow` tag (tracking.TAG_FLOW, set by flow_parent.flow_parent_run):
`convert`, `sweep` or `compare` (a run without it, made before the tag, is a conversion). What each reads:

conversion  its stage runs (tracking.stage_runs: nested and linked, so a fully cached re-run reads the
            runs that made its results): the plan the `plan` run stored (tag `moe2dense.output.plan.uri`,
            read from the artifact store), one EvalRow per `evaluate-<label>` run (`eval/perplexity`,
            `eval/kl_to_teacher`, `eval/mean_acc`; the teacher first), the curves of every stage run,
            lineage from their tags.
sweep       `sweep/results.json` on the parent run (flows/sweep.py; SweepPoints, best first); the plans of
            the best SWEEP_PLANS_SHOWN, each the plan stored by the first finished `plan` run tagged with
            its `moe2dense.plan_digest` (any experiment: a cached plan may come from another flow's run);
            for each distilled configuration its evaluation rows and the curves of the run that distilled
            it (`distill_run_id`: a cached distillation's run belongs to the flow that computed it).
comparison  COMPARISON_RESULTS on the parent run (data.ComparisonResults: one row per model and seed,
            with the runs that planned and distilled it): the evaluation rows, the plans of the named plan
            runs, the curves of the named distill runs.

A curve is the history of a metric of CURVE_METRICS (`loss`, `kl`) on a run, in step order.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from pydantic import ValidationError

from moe2dense_core.plan import ConversionPlan
from moe2dense_platform.reporting.data import (
    COMPARISON_RESULTS,
    CURVE_METRICS,
    ComparisonResults,
    Curve,
    EvalRow,
    LabelledPlan,
    ReportData,
    ReportError,
    ReportKind,
    SweepPoint,
    conversion_kind,
    lineage_rows,
    plan_label,
)
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_FLOW,
    TAG_OUTPUT,
    TAG_PLAN_DIGEST,
    TAG_RECIPE_NAME,
    TAG_SNAPSHOT_DIGEST,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_REVISION,
    TAG_STAGE,
    TAG_STATS_DIGEST,
    MLflowLogger,
    stage_runs,
)

FLOW_KINDS: dict[str, ReportKind] = {"convert": "conversion", "sweep": "sweep", "compare": "comparison"}
SWEEP_RESULTS = "sweep/results.json"
REPORT_ARTIFACTS = "report"
SWEEP_PLANS_SHOWN = 6
EVALUATE_PREFIX = "evaluate-"


def report_kind(run: Run) -> ReportKind:
    flow = run.data.tags.get(TAG_FLOW, "convert")
    if flow not in FLOW_KINDS:
        raise ReportError(f"run {run.info.run_id}: tag {TAG_FLOW}={flow!r} is none of {sorted(FLOW_KINDS)}")
    return FLOW_KINDS[flow]


def metric_curves(client: MlflowClient, run: Run, label: str) -> list[Curve]:
    """The run's curves (module docstring), one per metric of CURVE_METRICS it logged."""
    curves = []
    for metric in (m for m in CURVE_METRICS if m in run.data.metrics):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        curves.append(
            Curve(label=label, metric=metric, steps=[s for s, _ in points], values=[v for _, v in points])
        )
    return curves


def read_artifact_text(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, path, folder)
        except (MlflowException, OSError) as error:
            raise ReportError(f"run {run_id} has no artifact {path} ({error})") from None
        return Path(local).read_text(encoding="utf-8")


def stored_plan(runtime: Runtime, plan_run: Run) -> ConversionPlan:
    """The ConversionPlan a `plan` stage run published to the artifact store."""
    uri = plan_run.data.tags.get(f"{TAG_OUTPUT}.plan.uri")
    if uri is None:
        raise ReportError(f"run {plan_run.info.run_id} records no plan ({TAG_OUTPUT}.plan.uri)")
    return ConversionPlan.from_json(runtime.fetch_uri(uri).read_text(encoding="utf-8"))


def plan_run_of(client: MlflowClient, plan_digest: str) -> Run:
    """The earliest finished `plan` stage run, in any experiment, tagged with `plan_digest` (each such run
    stored the same plan)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        experiments,
        f"tags.`{TAG_STAGE}` = 'plan' and tags.`{TAG_PLAN_DIGEST}` = '{plan_digest}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if not found:
        raise ReportError(f"no finished plan run is tagged {TAG_PLAN_DIGEST}={plan_digest}")
    return found[0]


def first_tag(runs: Iterable[Run], tag: str) -> str | None:
    return next((run.data.tags[tag] for run in runs if tag in run.data.tags), None)


def source_lineage(runs: dict[str, Run]) -> dict[str, str | None]:
    """lineage_rows' source fields from the `source` stage run's tags (none without one)."""
    source = [runs["source"]] if "source" in runs else []
    return {
        "source_model": first_tag(source, TAG_SOURCE_MODEL),
        "source_revision": first_tag(source, TAG_SOURCE_REVISION),
        "snapshot_digest": first_tag(source, TAG_SNAPSHOT_DIGEST),
    }


def conversion_lineage(runs: dict[str, Run]) -> dict[str, str]:
    """Lineage from the stage runs' tags; the checkpoint is the distilled one when there is one."""
    final, kind = ("distill", "distilled-model") if "distill" in runs else ("assemble", "dense-model")
    return lineage_rows(
        **source_lineage(runs),
        stats_digest=first_tag(runs.values(), TAG_STATS_DIGEST),
        plan_digest=first_tag([runs["plan"]], TAG_PLAN_DIGEST),
        checkpoint_digest=first_tag([runs[final]] if final in runs else [], TAG_CHECKPOINT_DIGEST),
        checkpoint_uri=first_tag([runs[final]] if final in runs else [], f"{TAG_OUTPUT}.{kind}.uri"),
    )


def evaluation_rows(runs: dict[str, Run]) -> list[EvalRow]:
    """One row per `evaluate-<label>` stage run; the teacher first, then in the order they started."""
    evaluated = sorted(
        (
            (label.removeprefix(EVALUATE_PREFIX), run)
            for label, run in runs.items()
            if label.startswith(EVALUATE_PREFIX) and "eval/perplexity" in run.data.metrics
        ),
        key=lambda item: (item[0] != "teacher", item[1].info.start_time),
    )
    return [
        EvalRow(
            label=label,
            kind=conversion_kind(label),
            perplexity=run.data.metrics["eval/perplexity"],
            kl_to_teacher=run.data.metrics.get("eval/kl_to_teacher"),
            mean_acc=run.data.metrics.get("eval/mean_acc"),
        )
        for label, run in evaluated
    ]


def conversion_data(runtime: Runtime, parent: Run, title: str) -> ReportData:
    runs = stage_runs(runtime.client, parent.info.run_id)
    if "plan" not in runs:
        raise ReportError(f"run {parent.info.run_id} has no plan stage run (did the conversion fail early?)")
    plan = stored_plan(runtime, runs["plan"])
    return ReportData(
        kind="conversion",
        title=title,
        run_id=parent.info.run_id,
        lineage=conversion_lineage(runs),
        evaluations=evaluation_rows(runs),
        plans=[LabelledPlan(label=plan_label(plan.config), plan=plan)],
        curves=[c for label, run in sorted(runs.items()) for c in metric_curves(runtime.client, run, label)],
    )


def sweep_data(runtime: Runtime, parent: Run, title: str) -> ReportData:
    client, run_id = runtime.client, parent.info.run_id
    try:
        entries = json.loads(read_artifact_text(client, run_id, SWEEP_RESULTS))
        points = [SweepPoint.model_validate(entry) for entry in entries]
    except (ValueError, TypeError) as error:
        raise ReportError(f"run {run_id}: {SWEEP_RESULTS} is not a sweep's result table: {error}") from None
    plans = [
        LabelledPlan(label=point.label, plan=stored_plan(runtime, plan_run_of(client, point.plan_digest)))
        for point in points[:SWEEP_PLANS_SHOWN]
    ]
    evaluations, curves = [], []
    for point in (p for p in points if p.distilled_perplexity is not None):
        evaluations += [
            EvalRow(label=f"assembled: {point.label}", kind="converted", perplexity=point.perplexity),
            EvalRow(
                label=f"distilled: {point.label}",
                kind="converted",
                perplexity=point.distilled_perplexity,
                mean_acc=point.distilled_mean_acc,
            ),
        ]
        if point.distill_run_id:
            distill_run = client.get_run(point.distill_run_id)
            curves += metric_curves(client, distill_run, f"distilled: {point.label}")
    stats_digest = plans[0].plan.stats_digest if plans else None
    return ReportData(
        kind="sweep",
        title=title,
        run_id=run_id,
        lineage=lineage_rows(**source_lineage(stage_runs(client, run_id)), stats_digest=stats_digest),
        evaluations=evaluations,
        plans=plans,
        sweep=points,
        curves=curves,
    )


def comparison_data(runtime: Runtime, parent: Run, title: str) -> ReportData:
    client, run_id = runtime.client, parent.info.run_id
    try:
        results = ComparisonResults.model_validate_json(
            read_artifact_text(client, run_id, COMPARISON_RESULTS)
        )
    except ValidationError as error:
        raise ReportError(
            f"run {run_id}: {COMPARISON_RESULTS} is not a comparison's results: {error}"
        ) from None
    plans: dict[str, LabelledPlan] = {}
    curves = []
    for model in results.models:
        if model.plan_run_id and model.plan_run_id not in plans:
            plan = stored_plan(runtime, client.get_run(model.plan_run_id))
            plans[model.plan_run_id] = LabelledPlan(
                label=f"{model.label}: {plan_label(plan.config)}", plan=plan
            )
        if model.distill_run_id:
            label = model.label if model.seed is None else f"{model.label} (seed {model.seed})"
            curves += metric_curves(client, client.get_run(model.distill_run_id), label)
    return ReportData(
        kind="comparison",
        title=title,
        run_id=run_id,
        lineage=lineage_rows(**source_lineage(stage_runs(client, run_id))),
        evaluations=[
            EvalRow(**model.model_dump(include=set(EvalRow.model_fields))) for model in results.models
        ],
        plans=list(plans.values()),
        curves=curves,
    )


def gather_report(runtime: Runtime, run_id: str) -> ReportData:
    """The ReportData of parent run `run_id` (module docstring)."""
    try:
        parent = runtime.client.get_run(run_id)
    except MlflowException as error:
        where = runtime.redactor.redact(runtime.settings.resolved_mlflow_tracking_uri)
        raise ReportError(f"no MLflow run {run_id!r} on {where}: {error.message}") from None
    if TAG_STAGE in parent.data.tags:
        owner = parent.data.tags.get(MLFLOW_PARENT_RUN_ID)
        raise ReportError(
            f"run {run_id} is the {parent.data.tags[TAG_STAGE]!r} stage run of parent run {owner}: "
            "report the parent run"
        )
    title = parent.data.tags.get(TAG_RECIPE_NAME) or parent.info.run_name
    gather = {"conversion": conversion_data, "sweep": sweep_data, "comparison": comparison_data}
    return gather[report_kind(parent)](runtime, parent, title)


def log_report(logger: MLflowLogger, folder: Path) -> None:
    """Log every file of a rendered report folder as `report/<name>` on the logger's run (each scanned
    for credentials by MLflowLogger.log_artifact)."""
    for path in sorted(Path(folder).iterdir()):
        logger.log_artifact(path, REPORT_ARTIFACTS)
