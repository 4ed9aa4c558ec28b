"""MLflow lineage against a real `mlflow server` whose artifacts land in S3 (moto server)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from mlflow import MlflowClient

from moe2dense_platform.recipe import Recipe
from moe2dense_platform.recipe_io import load_recipe, recipe_to_yaml
from moe2dense_platform.redaction import MASK, CredentialLeakError, Redactor, install_log_redaction
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import (
    RECIPE_ARTIFACT,
    TAG_CHECKPOINT_SHA256,
    TAG_PLAN_DIGEST,
    TAG_PREFECT_FLOW_RUN,
    TAG_SOURCE_MODEL,
    TAG_SOURCE_REVISION,
    TAG_STAGE,
    TAG_TRUST_REMOTE_CODE,
    Lineage,
    converted_versions,
    log_dataset,
    parent_run,
    register_dense_model,
    stage_run,
    tracking_client,
)
from tests.integration.servers import MlflowServer, S3Server

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    return load_recipe(CONFIGS / "demo.yaml", [f"tracking.experiment=it-{tmp_path.name}"])


def bucket_objects(s3: S3Server) -> dict[str, bytes]:
    client = s3.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix="mlflow/")
        for o in page.get("Contents", [])
    ]
    return {key: client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() for key in keys}


def test_parent_stage_runs_inputs_artifacts_and_registered_lineage(
    mlflow_server: MlflowServer, s3_server: S3Server, recipe: Recipe, tmp_path: Path
) -> None:
    client = tracking_client(Settings(home=tmp_path, mlflow_tracking_uri=mlflow_server.tracking_uri))
    redactor = Redactor()
    checkpoint = tmp_path / "dense_model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "qwen3"}')

    with parent_run(client, recipe, redactor, flow_run_id="flow-run-123") as run:
        with stage_run(client, run.run_id, "calibrate", redactor, params={"num_tokens": 32768}) as stage:
            for step in range(3):
                stage.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            log_dataset(
                stage,
                name="calibration",
                source_uri="builtin://python-docs",
                digest="abc123",
                context="calibration",
                profile={"num_tokens": 32768},
            )
        run.log_artifact(checkpoint, None)
        stored = f"s3://{s3_server.bucket}/artifacts/dense-model/{'a' * 64}/dense_model"
        lineage = Lineage(
            source_model="org/tiny-moe",
            source_revision="rev-1",
            shard_digests={"model.safetensors": "f" * 64},
            plan_digest="p" * 64,
            checkpoint_uri=stored,
            flow_run_id="flow-run-123",
        )
        version = register_dense_model(run, "a" * 64, f"dense-{tmp_path.name}", lineage)

    parent = client.get_run(run.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["plan.scoring.name"] == "do_acp"
    assert parent.data.params["distillation.train.max_steps"] == str(recipe.distillation.train.max_steps)
    assert parent.data.tags[TAG_PREFECT_FLOW_RUN] == "flow-run-123"
    assert (
        parent.data.params["source.trust_remote_code"] == parent.data.tags[TAG_TRUST_REMOTE_CODE] == "false"
    )
    recipe_path = client.download_artifacts(run.run_id, RECIPE_ARTIFACT, str(tmp_path / "dl"))
    assert Path(recipe_path).read_text() == recipe_to_yaml(recipe)

    child = client.get_run(stage.run_id)
    assert child.data.tags["mlflow.parentRunId"] == run.run_id and child.data.tags[TAG_STAGE] == "calibrate"
    assert child.data.tags[TAG_PREFECT_FLOW_RUN] == "flow-run-123"  # inherited, links back to Prefect
    assert [m.step for m in client.get_metric_history(stage.run_id, "loss")] == [0, 1, 2]
    (dataset_input,) = child.inputs.dataset_inputs
    assert dataset_input.dataset.digest == "abc123"
    assert json.loads(dataset_input.dataset.source) == {"uri": "builtin://python-docs"}

    assert (version.tags[TAG_SOURCE_MODEL], version.tags[TAG_SOURCE_REVISION]) == ("org/tiny-moe", "rev-1")
    assert version.tags[TAG_PLAN_DIGEST] == "p" * 64 and version.run_id == run.run_id
    assert version.source == stored and version.tags[TAG_CHECKPOINT_SHA256] == "a" * 64  # points, no upload
    assert version.tags[TAG_TRUST_REMOTE_CODE] == "false"
    assert [v.version for v in converted_versions(client, "org/tiny-moe", "rev-1")] == [version.version]
    assert converted_versions(client, "org/tiny-moe", "rev-2") == []

    # every artifact is an object in the S3 bucket behind the server
    objects = bucket_objects(s3_server)
    assert any(k.endswith(f"{run.run_id}/artifacts/dense_model/config.json") for k in objects)
    assert any(k.endswith(f"{run.run_id}/artifacts/{RECIPE_ARTIFACT}") for k in objects)
    assert any(k.endswith(f"{run.run_id}/artifacts/lineage/shards.json") for k in objects)


def test_failing_stage_marks_its_run_and_the_parent_failed(
    mlflow_server: MlflowServer, recipe: Recipe, tmp_path: Path
) -> None:
    client = tracking_client(Settings(home=tmp_path, mlflow_tracking_uri=mlflow_server.tracking_uri))
    with (
        pytest.raises(RuntimeError, match="boom"),
        parent_run(client, recipe, Redactor()) as run,
        stage_run(client, run.run_id, "plan", Redactor()) as stage,
    ):
        raise RuntimeError("boom")
    assert client.get_run(stage.run_id).info.status == "FAILED"
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_no_planted_secret_reaches_params_tags_artifacts_inputs_or_logs(
    mlflow_server: MlflowServer, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = {
        "aws_key": "AKIAPLANTEDKEY0001",
        "aws_secret": "planted/secret+value/0002",
        "hub_token": "hf_plantedtoken0003",
        "mlflow_password": "planted-password-0004",
    }
    monkeypatch.setenv("HF_TOKEN", planted["hub_token"])
    settings = Settings(
        home=tmp_path,
        mlflow_tracking_uri=mlflow_server.tracking_uri,
        aws_access_key_id=planted["aws_key"],
        aws_secret_access_key=planted["aws_secret"],
        mlflow_tracking_password=planted["mlflow_password"],
    )
    redactor = Redactor.from_environment(settings)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)

    log_stream = io.StringIO()
    handler = logging.StreamHandler(log_stream)
    app_log = logging.getLogger("moe2dense.it.secrets")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    install_log_redaction(redactor)

    recipe = load_recipe(
        CONFIGS / "demo.yaml",
        [
            f"tracking.experiment=it-secrets-{tmp_path.name}",
            f"description=uses key {planted['aws_key']}",  # a user pasted a key into the recipe
        ],
    )
    leaky_file = tmp_path / "leaky.txt"
    leaky_file.write_text(f"token={planted['hub_token']}\n")
    try:
        with (
            parent_run(
                client, recipe, redactor, extra_tags={"note": f"secret {planted['aws_secret']}"}
            ) as run,
            stage_run(client, run.run_id, "source", redactor) as stage,
        ):
            stage.log_params(
                {
                    "aws_secret_access_key": "not-even-a-known-value",
                    "endpoint": f"http://user:{planted['mlflow_password']}@host",
                }
            )
            stage.set_tags({"debug": str(settings.environment())})
            stage.log_metrics({f"loss_{planted['hub_token']}": 1.0})
            log_dataset(
                stage,
                name="calibration",
                source_uri=f"s3://b/x?token={planted['hub_token']}",
                digest="d1",
                context="calibration",
            )
            with pytest.raises(CredentialLeakError, match="leaky.txt"):
                stage.log_artifact(leaky_file)
            stage.log_text(f"aws {planted['aws_secret']}", "notes/notes.txt")
            app_log.info("connecting with %s and %s", planted["aws_key"], planted["aws_secret"])
    finally:
        app_log.removeHandler(handler)

    haystack = [log_stream.getvalue()]
    for run_id in (run.run_id, stage.run_id):
        data = client.get_run(run_id)
        haystack += [
            json.dumps(data.data.params),
            json.dumps(data.data.tags),
            json.dumps(list(data.data.metrics)),
        ]
        haystack += [
            json.dumps(
                [[d.dataset.name, d.dataset.source, d.dataset.profile] for d in data.inputs.dataset_inputs]
            )
        ]
        download = Path(client.download_artifacts(run_id, "", str(tmp_path / f"dl-{run_id}")))
        haystack += [p.read_text(errors="replace") for p in download.rglob("*") if p.is_file()]
    haystack += [body.decode(errors="replace") for body in bucket_objects(s3_server).values()]
    everything = "\n".join(haystack)

    for name, value in planted.items():
        assert value not in everything, f"planted {name} leaked"
    assert "not-even-a-known-value" not in everything  # masked by its credential-like key
    assert MASK in log_stream.getvalue() and MASK in client.get_run(stage.run_id).data.params["endpoint"]
    assert "leaky.txt" not in everything  # the refused artifact was not uploaded
