"""moe2dense_platform/result_storage.py: stage task results live in the artifact store the process's settings name."""

from __future__ import annotations

import pytest

from moe2dense_platform.result_storage import RESULTS_FOLDER, ArtifactStoreResults

KEY = "moe2dense-plan-" + "ab" * 32


def test_results_go_under_the_local_artifact_root_of_the_current_settings(tmp_path, monkeypatch):
    block = ArtifactStoreResults()
    monkeypatch.setenv("MOE2DENSE_ARTIFACT_ROOT", str(tmp_path / "store-a"))
    block.write_path(KEY, b"result record", _sync=True)
    assert (tmp_path / "store-a" / RESULTS_FOLDER / KEY).read_bytes() == b"result record"
    assert block.read_path(KEY, _sync=True) == b"result record"
    monkeypatch.setenv("MOE2DENSE_ARTIFACT_ROOT", str(tmp_path / "store-b"))
    with pytest.raises(FileNotFoundError):
        block.read_path(KEY, _sync=True)  # another store: nothing of store-a is served
    with pytest.raises(ValueError, match="result key"):
        block.write_path("../escape", b"x", _sync=True)


def test_results_go_under_the_s3_artifact_root(s3_server, monkeypatch):
    monkeypatch.setenv("MOE2DENSE_ARTIFACT_ROOT", f"s3://{s3_server.bucket}/results-test")
    monkeypatch.setenv("MOE2DENSE_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("MOE2DENSE_AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("MOE2DENSE_AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    block = ArtifactStoreResults()
    with pytest.raises(FileNotFoundError):
        block.read_path(KEY, _sync=True)
    block.write_path(KEY, b"result record", _sync=True)
    stored = s3_server.client().get_object(
        Bucket=s3_server.bucket, Key=f"results-test/{RESULTS_FOLDER}/{KEY}"
    )
    assert stored["Body"].read() == b"result record"
    assert block.read_path(KEY, _sync=True) == b"result record"
