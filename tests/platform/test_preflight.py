"""Issue 10 item 5: before any task, an unreachable tracking server, an unreachable or refusing bucket
fail in seconds with one error naming the endpoint (today an unreachable MLflow hangs ~4 minutes and a
missing bucket fails only after calibration). Real sockets, the session's moto S3 server."""

from __future__ import annotations

import socket

import pytest

from moe2dense_platform.preflight import PreflightError, preflight
from moe2dense_platform.redaction import Redactor
from moe2dense_platform.settings import Settings


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_tracking_server_is_named(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    settings = Settings(home=tmp_path, mlflow_tracking_uri=uri)
    with pytest.raises(PreflightError, match=f"MLflow tracking server {uri} is unreachable within 1 s"):
        preflight(settings, Redactor(), timeout_s=1.0)


def test_an_unreachable_s3_endpoint_is_named(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    settings = Settings(
        home=tmp_path,
        artifact_root="s3://bucket/artifacts",
        s3_endpoint_url=endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    with pytest.raises(PreflightError, match=f"S3 endpoint {endpoint} is unreachable"):
        preflight(settings, Redactor(), timeout_s=1.0)


def test_a_missing_bucket_is_refused_and_a_good_one_passes(s3_server, tmp_path):
    def settings(bucket: str) -> Settings:
        return Settings(
            home=tmp_path,
            artifact_root=f"s3://{bucket}/artifacts",
            s3_endpoint_url=s3_server.endpoint_url,
            aws_access_key_id=s3_server.access_key_id,
            aws_secret_access_key=s3_server.secret_access_key,
        )

    with pytest.raises(
        PreflightError, match=r"s3://no-such-bucket/artifacts .* refused a write \(NoSuchBucket\)"
    ):
        preflight(settings("no-such-bucket"), Redactor(), timeout_s=2.0)
    preflight(settings(s3_server.bucket), Redactor(), timeout_s=2.0)
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="artifacts/_preflight/")
    assert listed["KeyCount"] == 0  # the probe is removed


def test_an_unwritable_local_root_is_named(tmp_path):
    root = tmp_path / "root"
    root.write_text("a file, not a folder")
    with pytest.raises(PreflightError, match=f"artifact store {root} is not writable"):
        preflight(Settings(home=tmp_path, artifact_root=str(root)), Redactor(), timeout_s=1.0)
