"""The session server fixtures themselves: each answers on 127.0.0.1 and is what it claims to be."""

from __future__ import annotations

import json
import urllib.request

import prefect

from tests.integration.servers import MlflowServer, S3Server


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_prefect_server_answers_with_its_version(prefect_server: str) -> None:
    assert prefect_server.startswith("http://127.0.0.1:") and prefect_server.endswith("/api")
    assert get_json(f"{prefect_server}/health") is True
    assert get_json(f"{prefect_server}/admin/version") == prefect.__version__


def test_mlflow_server_stores_artifacts_in_the_s3_bucket(
    mlflow_server: MlflowServer, s3_server: S3Server
) -> None:
    assert mlflow_server.artifacts_destination == f"s3://{s3_server.bucket}/mlflow"
    with urllib.request.urlopen(f"{mlflow_server.tracking_uri}/health", timeout=10) as response:
        assert response.read() == b"OK"
    assert (
        s3_server.client().head_bucket(Bucket=s3_server.bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    )
