"""No credential from the environment reaches anything a real `convert` run records.

The convert flow runs end to end on the tiny teacher against the real Prefect server, MLflow server and
S3 API with recognisable fake secrets in the environment: the store's own S3 secret (used for every
request to the S3 API), a plain `AWS_SECRET_ACCESS_KEY` and an MLflow token. A completion hook logs a
line holding every secret on the flow run's logger (shipped to the Prefect API as a run log) and on a
stdlib logger (the root's handlers): it stands for any library that logs a credential, and the redaction
the run installed must mask it. Then everything is searched: every MLflow run's params, tags, metric
keys and dataset inputs, every registered model version's tags and description, every object in the
bucket (the artifact store and MLflow's artifacts: checkpoints, model cards, reports, eval JSON), every
file under the local home (Prefect's persisted results, the artifact cache), the Prefect run logs and
artifacts read back through the API client, the flow's return value and the captured output.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from prefect.logging.loggers import flow_run_logger

from flows.convert import convert_flow
from moe2dense_platform.redaction import MASK
from moe2dense_platform.tracking import TAG_PREFECT_FLOW_RUN, tracking_client

pytestmark = pytest.mark.integration

SECRETS = {
    "MOE2DENSE_AWS_SECRET_ACCESS_KEY": "FAKESECRET-store-s3-key-4b1d9e",
    "AWS_SECRET_ACCESS_KEY": "FAKESECRET-aws-env-key-7f3a9c",
    "MOE2DENSE_MLFLOW_TRACKING_TOKEN": "FAKESECRET-mlflow-token-2c8e51",
}
PROBE = "probe: a library logged credentials"


def log_every_secret(flow, flow_run, state) -> None:
    """Completion hook: what a careless library would log, on the run logger and on a stdlib logger."""
    line = f"{PROBE} " + " ".join(SECRETS.values())
    flow_run_logger(flow_run, flow).warning(line)
    logging.getLogger("some.library").warning(line)


def run_logs(flow_run_id: str, timeout_s: float = 30.0) -> list[str]:
    """The flow run's logs from the Prefect API, polled until the hook's probe line has arrived."""
    APILogWorker.drain_all(timeout=10)
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        messages = [log.message for log in logs]
        if any(PROBE in m for m in messages) or time.monotonic() > deadline:
            return messages


def bucket_bodies(s3_server) -> list[bytes]:
    client = s3_server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return [client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() for key in keys]


def mlflow_records(client) -> list[str]:
    """Every run's params, tags, metric keys and dataset inputs; every model version's tags and text."""
    records = []
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    for run in client.search_runs(experiment_ids, max_results=1000):
        records += [
            repr(run.data.params),
            repr(run.data.tags),
            repr(sorted(run.data.metrics)),
            run.info.run_name,
        ]
        records += [repr(i.dataset) for i in run.inputs.dataset_inputs]
    for version in client.search_model_versions():
        records += [repr(version.tags), version.description or "", version.source]
    return records


def test_no_environment_secret_reaches_anything_a_convert_run_records(
    team_stack, tiny_teacher, s3_server, monkeypatch, caplog, capfd
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING)
    recipe = tiny_teacher.recipe("name=secrets", "tracking.registered_model=secrets-dense")

    result = convert_flow.with_options(on_completion=[log_every_secret])(recipe)

    mlflow = tracking_client(team_stack)
    flow_run_id = mlflow.get_run(result.mlflow_run_id).data.tags[TAG_PREFECT_FLOW_RUN]
    logs = run_logs(flow_run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    output = capfd.readouterr()
    texts = [
        *logs,
        *[repr(a.data) + repr(a.description) for a in artifacts],
        result.model_dump_json(),
        *mlflow_records(mlflow),
        caplog.text,
        output.out,
        output.err,
    ]
    blobs = [
        *bucket_bodies(s3_server),
        *(p.read_bytes() for p in Path(team_stack.home).rglob("*") if p.is_file()),
    ]

    probes = [m for m in logs if PROBE in m]
    assert probes and all(MASK in m for m in probes), logs  # the run's own logs went through the redaction
    assert PROBE in caplog.text and f"{PROBE} {MASK}" in caplog.text
    assert len(blobs) > 10 and any(b"secrets-dense" in b or b"safetensors" in b for b in blobs)
    for name, secret in SECRETS.items():
        assert not [t for t in texts if secret in t], f"{name} leaked into a record"
        assert not [b for b in blobs if secret.encode() in b], f"{name} leaked into a stored file"
