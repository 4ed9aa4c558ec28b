"""The start every pipeline flow shares: result storage, runtime, preflight, the MLflow parent run, its link.

    with flow_parent_run(recipe, "convert") as (runtime, parent):
        source = source_task(recipe.source, parent.run_id)
        ...

Order (each step before anything expensive): the stage tasks' result storage in the artifact store
(moe2dense_platform.result_storage), the runtime from the environment, preflight (tracking server,
bucket, credentials — seconds, not minutes), then the parent run tagged with the recipe, the flow's name
(`moe2dense.flow`, which `moe2dense report` reads to know what it shows) and the Prefect flow run, and a
Prefect artifact on the flow run pointing at that MLflow run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run

from moe2dense_platform.preflight import preflight
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.result_storage import ensure_result_storage
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_FLOW, MLflowLogger, parent_run, run_url


@contextmanager
def flow_parent_run(recipe: Recipe, flow_name: str) -> Iterator[tuple[Runtime, MLflowLogger]]:
    """(runtime, parent run) for one run of the flow `flow_name` (module docstring); the parent run ends
    FINISHED when the block returns and FAILED when it raises."""
    ensure_result_storage()
    runtime = Runtime.from_environment()
    preflight(runtime.settings, runtime.redactor)
    with parent_run(
        runtime.client,
        recipe,
        runtime.redactor,
        artifact_location=runtime.settings.resolved_mlflow_artifact_location,
        flow_run_id=flow_run.id,
        extra_tags={TAG_FLOW: flow_name},
    ) as parent:
        link_mlflow_run(runtime, parent.run_id)
        yield runtime, parent


def link_mlflow_run(runtime: Runtime, run_id: str) -> None:
    """A Prefect link artifact on the flow run to the MLflow run's page (tracking URI with no credentials);
    an embedded (file / SQLite) tracking store has no page: a markdown note naming the run instead."""
    uri = runtime.redactor.redact(runtime.settings.resolved_mlflow_tracking_uri)
    description = "Where this flow run's lineage, metrics and artifacts are recorded"
    if uri.startswith(("http://", "https://")):
        experiment_id = runtime.client.get_run(run_id).info.experiment_id
        create_link_artifact(
            key="mlflow-run",
            link=run_url(uri, experiment_id, run_id),
            link_text=f"MLflow run {run_id}",
            description=description,
        )
    else:
        create_markdown_artifact(
            key="mlflow-run",
            markdown=f"MLflow parent run `{run_id}` on `{uri}` (browse: `moe2dense ui`, `moe2dense report {run_id}`)",
            description=description,
        )
