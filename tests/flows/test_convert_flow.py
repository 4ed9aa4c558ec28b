"""flows/convert.py end to end against a real Prefect server, a real MLflow server and a real S3 API."""

from __future__ import annotations

import hashlib
import re
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from flows.cli import app
from flows.convert import convert_flow, planned_stages
from moe2dense_platform.storage import open_artifact_store
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_SHA256,
    TAG_PLAN_DIGEST,
    TAG_PREFECT_FLOW_RUN,
    TAG_SOURCE_MODEL,
    TAG_STAGE,
    TAG_STATS_DIGEST,
    stage_runs,
    tracking_client,
)

pytestmark = pytest.mark.integration

STAGES = {
    "source",
    "calibrate",
    "plan",
    "assemble",
    "evaluate-teacher",
    "evaluate-assembled",
    "distill",
    "evaluate-distilled",
    "report",
    "register",
}


def task_run_states(
    flow_run_id: str, expected: set[str] = frozenset(), timeout_s: float = 30.0
) -> dict[str, str]:
    """{task name: state name} of a flow run's task runs, polled until `expected` names are all there
    (the server records task runs from events, a moment after the flow returns)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        states = {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}
        if expected <= set(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.fixture(scope="module")
def converted(team_stack, tiny_teacher):
    recipe = tiny_teacher.recipe("tracking.registered_model=it-dense")
    return recipe, convert_flow(recipe)


def test_lineage_chain_is_complete_in_mlflow(team_stack, converted):
    recipe, result = converted
    client = tracking_client(team_stack)
    parent = client.get_run(result.mlflow_run_id)
    flow_run_id = parent.data.tags[TAG_PREFECT_FLOW_RUN]
    assert parent.data.params["plan.scoring.name"] == recipe.plan.scoring.name
    assert "recipe/recipe.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id, "recipe")]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_stage = {run.data.tags[TAG_STAGE]: run for run in children}
    assert set(by_stage) == STAGES
    assert all(run.data.tags[TAG_PREFECT_FLOW_RUN] == flow_run_id for run in children)
    assert {i.dataset.name for i in by_stage["calibrate"].inputs.dataset_inputs} == {"calibration"}
    assert {i.dataset.name for i in by_stage["distill"].inputs.dataset_inputs} == {"distillation"}
    assert client.get_metric_history(by_stage["distill"].info.run_id, "loss")  # the curve, as step metrics
    version = client.get_model_version("it-dense", result.registered_model.split("/")[1])
    assert version.tags[TAG_SOURCE_MODEL] == recipe.source.model
    assert version.tags[TAG_STATS_DIGEST] == result.calibration.stats_digest
    assert version.tags[TAG_PLAN_DIGEST] == result.plan.plan_digest
    assert version.tags[TAG_PREFECT_FLOW_RUN] == flow_run_id


def test_every_artifact_is_in_the_bucket_with_its_recorded_digest(team_stack, converted, s3_server):
    _, result = converted
    store = open_artifact_store(team_stack)
    uris = [
        result.calibration.stats_uri,
        result.plan.plan_uri,
        result.assembled.checkpoint_uri,
        result.final.checkpoint_uri,
        result.report_uri,
        *[e.eval_uri for e in result.evaluations],
    ]
    s3 = s3_server.client()
    for uri in uris:
        assert uri.startswith(f"s3://{s3_server.bucket}/artifacts/")
        ref = store.ref_from_uri(uri)
        manifest = store.manifest(ref)
        prefix = uri[len(f"s3://{s3_server.bucket}/") :]
        for entry in manifest.files:
            key = prefix if manifest.layout == "file" else f"{prefix}/{entry.path}"
            body = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry.sha256, key
    mlflow_objects = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix="mlflow/")
    assert mlflow_objects["KeyCount"] > 0  # MLflow's own artifacts (plans, reports, JSON) landed in S3
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket)
        for o in page.get("Contents", [])
    ]
    shards = [key for key in keys if key.endswith(".safetensors") and not key.startswith("artifacts/stats/")]
    # one copy of each checkpoint (the assembled and the distilled one), in the store only
    assert len(shards) == len(result.assembled.shard_digests) + len(result.final.shard_digests), shards
    assert not [key for key in shards if not key.startswith("artifacts/")], shards


def test_the_registered_version_serves_the_stored_checkpoint(team_stack, converted):
    _, result = converted
    name, number = result.registered_model.split("/")
    version = tracking_client(team_stack).get_model_version(name, number)
    assert version.source == result.final.checkpoint_uri
    store = open_artifact_store(team_stack)
    ref = store.ref_from_uri(version.source)  # the project's store downloads s3:// (verified)
    assert version.tags[TAG_CHECKPOINT_SHA256] == ref.sha256
    model = AutoModelForCausalLM.from_pretrained(store.fetch(ref))
    assert sum(p.numel() for p in model.parameters()) == result.final.num_parameters


def test_the_prefect_artifact_links_to_the_mlflow_run(team_stack, converted):
    _, result = converted
    flow_run_id = tracking_client(team_stack).get_run(result.mlflow_run_id).data.tags[TAG_PREFECT_FLOW_RUN]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    (link,) = [a for a in artifacts if a.key == "mlflow-run"]
    tracking_uri = team_stack.resolved_mlflow_tracking_uri
    # Prefect stores a link artifact as a markdown link: [text](url)
    assert re.fullmatch(
        rf"\[MLflow run {result.mlflow_run_id}\]\({re.escape(tracking_uri)}/#/experiments/\d+/runs/"
        rf"{result.mlflow_run_id}\)",
        link.data,
    ), link.data


def test_a_second_run_re_executes_no_stage(team_stack, converted):
    recipe, first = converted
    second = convert_flow(recipe)
    assert second.final.checkpoint_digest == first.final.checkpoint_digest
    flow_run_id = tracking_client(team_stack).get_run(second.mlflow_run_id).data.tags[TAG_PREFECT_FLOW_RUN]
    stages = {"source", "calibrate", "plan", "assemble", "distill", "evaluate", "report", "register"}
    states = task_run_states(flow_run_id, expected=stages)
    assert set(states) >= stages
    assert set(states.values()) == {"Cached"}, states
    client = tracking_client(team_stack)
    first_runs, second_runs = (
        stage_runs(client, first.mlflow_run_id),
        stage_runs(client, second.mlflow_run_id),
    )
    assert set(second_runs) == STAGES  # the cached parent links to the runs that made each result
    assert {k: r.info.run_id for k, r in second_runs.items()} == {
        k: r.info.run_id for k, r in first_runs.items()
    }
    shown = CliRunner().invoke(app, ["report", second.mlflow_run_id])
    assert shown.exit_code == 0, shown.output
    assert "distilled" in shown.output and f"{second.mlflow_run_id}/index.html" in shown.output
    listed = CliRunner().invoke(app, ["report", "--experiment", recipe.tracking.experiment])
    assert second.mlflow_run_id[:8] in listed.output


def test_planned_stages_are_the_stages_a_run_makes(team_stack, converted):
    recipe, result = converted
    flow_run_id = tracking_client(team_stack).get_run(result.mlflow_run_id).data.tags[TAG_PREFECT_FLOW_RUN]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert sorted(run.name.rsplit("-", 1)[0] for run in runs) == sorted(planned_stages(recipe))


def test_an_impossible_plan_fails_before_calibration(team_stack, tiny_teacher):
    recipe = tiny_teacher.recipe("plan.num_selected=9", "plan.grouping=output_cluster", "name=impossible")
    state = convert_flow(recipe, return_state=True)
    assert state.is_failed()
    assert "num_selected" in str(state.result(raise_on_failure=False))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert set(task_run_states(str(flow_run.id), expected={"source"})) == {"source"}


def test_an_invalid_recipe_parameter_fails_before_any_task(team_stack, tiny_teacher):
    """What the Prefect UI form / run_deployment sends is validated against Recipe before the flow body."""
    bad = {"name": "bad", "source": {"model": str(tiny_teacher.path)}, "plan": {"num_selected": 0}}
    state = convert_flow(recipe=bad, return_state=True)
    assert state.is_failed()
    assert "num_selected" in str(state.result(raise_on_failure=False))
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None and task_run_states(str(flow_run_id)) == {}
