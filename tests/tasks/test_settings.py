"""Settings: embedded default vs team stack by configuration only; secrets never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.settings import Settings, load_settings

TEAM_FILE = """\
artifact_root: s3://team-bucket/moe2dense
s3_endpoint_url: http://minio:9000
mlflow_tracking_uri: http://mlflow:5000
prefect_api_url: http://prefect:4200/api
aws_access_key_id: file-access-key-123
aws_secret_access_key: file-secret-key-456
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MOE2DENSE_"):
            monkeypatch.delenv(name)


def test_embedded_default_lives_under_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "state")
    assert not settings.uses_s3
    assert settings.resolved_artifact_root == str(tmp_path / "state" / "artifacts")
    assert settings.resolved_mlflow_tracking_uri == f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"
    assert settings.resolved_mlflow_artifact_location == (tmp_path / "state" / "mlartifacts").resolve().as_uri()
    env = settings.environment()
    assert "PREFECT_API_URL" not in env
    assert env["PREFECT_HOME"] == str((tmp_path / "state" / "prefect").resolve())
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true" and env["DO_NOT_TRACK"] == "true"
    assert env["PREFECT_LOCAL_STORAGE_PATH"] == str((tmp_path / "state" / "prefect" / "results").resolve())


def test_team_stack_from_a_settings_file_with_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "team.yaml"
    path.write_text(TEAM_FILE)
    monkeypatch.setenv("MOE2DENSE_SETTINGS_FILE", str(path))
    monkeypatch.setenv("MOE2DENSE_S3_REGION", "eu-west-1")  # the environment beats the file
    settings = Settings()

    assert settings.uses_s3 and settings.s3_region == "eu-west-1"
    assert settings.resolved_mlflow_artifact_location is None  # the server's --artifacts-destination decides
    assert settings.s3_client_kwargs() == {
        "region_name": "eu-west-1", "endpoint_url": "http://minio:9000",
        "aws_access_key_id": "file-access-key-123", "aws_secret_access_key": "file-secret-key-456",
    }
    env = settings.environment()
    assert env["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == "file-secret-key-456"
    assert sorted(settings.secret_values()) == ["file-access-key-123", "file-secret-key-456"]


def test_secrets_never_appear_in_repr_or_describe(tmp_path: Path) -> None:
    path = tmp_path / "team.yaml"
    path.write_text(TEAM_FILE)
    settings = load_settings(path)
    for text in (repr(settings), str(settings), str(settings.describe()), settings.model_dump_json()):
        assert "file-secret-key-456" not in text and "file-access-key-123" not in text


def test_apply_environment_removes_a_stray_prefect_api_url(tmp_path: Path) -> None:
    environ = {"PREFECT_API_URL": "http://stale:4200/api", "UNRELATED": "kept"}
    load_settings(home=tmp_path).apply_environment(environ)
    assert "PREFECT_API_URL" not in environ and environ["UNRELATED"] == "kept"
    assert environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")


def test_bad_settings_are_refused_with_the_field_name(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="mlflow_tracking_uri"):
        Settings(mlflow_tracking_uri="http://user:hunter2-password@mlflow:5000")
    with pytest.raises(ValidationError, match="artifcat_root"):
        Settings(artifcat_root="s3://typo")
    (tmp_path / "typo.yaml").write_text("mlflow_tracking_url: http://mlflow:5000\n")
    with pytest.raises(ValidationError, match="mlflow_tracking_url"):
        load_settings(tmp_path / "typo.yaml")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings(tmp_path / "missing.yaml")
