"""Stage `report`: one HTML page (+ PNG plots) summarising a conversion, and model registration.

The report shows where the model came from (source id, revision, snapshot / stats / plan / checkpoint
digests), the plan (kept experts per layer, target width), the evaluation table (teacher, assembled
student before distillation, distilled student: held-out perplexity and downstream accuracy), and
the distillation loss curve read back from the distill stage's MLflow run. Published once to the
artifact store (kind `report`); small (HTML + PNG), so its `report` stage run also shows it under
`report/`. Cached on the recipe digest and every result it summarises.

`register_task` registers the final checkpoint in the MLflow Model Registry with lineage tags
(moe2dense_platform.tracking.register_dense_model): the model version's `source` is the checkpoint's store URI — the
checkpoint is not uploaded again — with the store's content address as a tag; a checkpoint already
registered under that name is not registered twice. Cached on checkpoint digest, model name and the
tracking URI (where it registers).
"""

from __future__ import annotations

import html
from pathlib import Path

from moe2dense_platform.runtime import Runtime
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_RECIPE_DIGEST,
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


def loss_curve_png(runtime: Runtime, run_id: str, path: Path) -> bool:
    """Plot the distill run's `loss` history to `path`; False when there is no such metric."""
    history = runtime.client.get_metric_history(run_id, "loss")
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 3.5))
    points = sorted((m.step, m.value) for m in history)
    axis.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("distillation loss")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True


def report_html(inputs: ReportInputs, has_curve: bool) -> str:
    e = html.escape
    source, plan = inputs.source, inputs.plan
    rows = "".join(
        f"<tr><td>{e(r.label)}</td><td>{r.perplexity:.3f}</td>"
        f"<td>{'' if r.downstream_mean_acc is None else f'{r.downstream_mean_acc:.4f}'}</td>"
        f"<td><code>{e(r.checkpoint_digest[:16])}</code></td></tr>"
        for r in inputs.evaluations
    )
    kept = "".join(
        f"<tr><td>{layer}</td><td>{e(str(experts))}</td></tr>" for layer, experts in plan.kept_experts.items()
    )
    curve = '<h2>Distillation</h2><img src="loss_curve.png" alt="distillation loss">' if has_curve else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>moe2dense: {e(inputs.recipe_name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}</style>
</head><body><h1>moe2dense report: {e(inputs.recipe_name)}</h1>
<h2>Lineage</h2><table>
<tr><th>source</th><td>{e(source.model)} @ {e(source.revision or "local folder")} ({e(source.model_type)}, E={source.num_experts}, k={source.top_k})</td></tr>
<tr><th>snapshot digest</th><td><code>{e(source.snapshot_digest)}</code></td></tr>
<tr><th>stats digest</th><td><code>{e(plan.stats_digest)}</code></td></tr>
<tr><th>plan digest</th><td><code>{e(plan.plan_digest)}</code></td></tr>
<tr><th>checkpoint digest</th><td><code>{e(inputs.checkpoint.checkpoint_digest)}</code></td></tr>
<tr><th>checkpoint</th><td><code>{e(inputs.checkpoint.checkpoint_uri)}</code></td></tr>
</table>
<h2>Plan</h2><p>{e(plan.config.model_dump_json())}; dense FFN width {plan.target_width}</p>
<table><tr><th>layer</th><th>kept experts</th></tr>{kept}</table>
<h2>Evaluation</h2><table><tr><th>model</th><th>held-out perplexity</th><th>mean accuracy</th><th>digest</th></tr>{rows}</table>
{curve}</body></html>"""


@stage("report", result=ReportResult, key=lambda p: [p["recipe_digest"], p["results"]])
def report_task(results: ReportInputs, recipe_digest: str, parent_run_id: str) -> ReportResult:
    """Write the report, in its own stage run."""
    runtime = Runtime.from_environment()
    with runtime.stage(parent_run_id, "report") as run, runtime.scratch("report") as scratch:
        run.set_tags({TAG_RECIPE_DIGEST: recipe_digest})
        record_inputs(run, runtime, checkpoint=results.checkpoint.checkpoint_uri, plan=results.plan.plan_uri)
        folder = scratch / "report"
        folder.mkdir()
        has_curve = bool(results.distill_run_id) and loss_curve_png(
            runtime, results.distill_run_id, folder / "loss_curve.png"
        )
        (folder / "index.html").write_text(report_html(results, has_curve), encoding="utf-8")
        uri = publish_dir(runtime, run, folder, kind="report", name="report")
        run.log_artifact(folder)  # small: browsable in the MLflow UI
        result = ReportResult(report_uri=uri, mlflow_run_id=run.run_id)
        finish(run, "report", result)
        return result


@stage(
    "register",
    result=RegistrationResult,
    key=lambda p: [p["checkpoint"].checkpoint_digest, p["model_name"], Settings().resolved_mlflow_tracking_uri],
)
def register_task(
    source: SourceResult,
    plan: PlanResult,
    checkpoint: CheckpointResult,
    model_name: str,
    flow_run_id: str | None,
    parent_run_id: str,
) -> RegistrationResult:
    """Register the stored checkpoint as a new version of `model_name` (or return the existing one)."""
    runtime = Runtime.from_environment()
    existing = runtime.client.search_model_versions(
        f"name = '{model_name}' and tags.`{TAG_CHECKPOINT_DIGEST}` = '{checkpoint.checkpoint_digest}'"
    )
    if existing:
        return RegistrationResult(
            model_name=model_name, version=str(existing[0].version), checkpoint_uri=existing[0].source,
            mlflow_run_id=existing[0].run_id,
        )
    lineage = Lineage(
        source_model=source.model,
        source_revision=source.revision or source.snapshot_digest,
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
            model_name=model_name, version=str(version.version), checkpoint_uri=checkpoint.checkpoint_uri,
            mlflow_run_id=run.run_id,
        )
