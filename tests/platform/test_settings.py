"""Settings: embedded default vs team stack by configuration only; the ecosystem's own variables
(Prefect, MLflow, boto3) honoured with `MOE2DENSE_*` as overrides; secrets never printed."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from pydantic import ValidationError

from moe2dense_platform.ecosystem_env import ECOSYSTEM_VARIABLES
from moe2dense_platform.settings import Settings, load_settings

TEAM_FILE = """\
artifact_root: s3://team-bucket/moe2dense
s3_endpoint_url: http://minio:9000
mlflow_tracking_uri: http://mlflow:5000
prefect_api_url: http://prefect:4200/api
aws_access_key_id: file-access-key-123
aws_secret_access_key: file-secret-key-456
"""


ECOSYSTEM_NAMES = {name for names in ECOSYSTEM_VARIABLES.values() for name in names}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MOE2DENSE_* or ecosystem variable from the caller, and no Prefect profile (none exists there)."""
    for name in list(os.environ):
        if name.startswith("MOE2DENSE_") or name in ECOSYSTEM_NAMES or name == "PREFECT_PROFILE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "no-profiles.toml"))


def test_embedded_default_lives_under_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "state")
    assert not settings.uses_s3
    assert settings.resolved_artifact_root == str(tmp_path / "state" / "artifacts")
    assert (
        settings.resolved_mlflow_tracking_uri == f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"
    )
    assert (
        settings.resolved_mlflow_artifact_location == (tmp_path / "state" / "mlartifacts").resolve().as_uri()
    )
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
        "region_name": "eu-west-1",
        "endpoint_url": "http://minio:9000",
        "aws_access_key_id": "file-access-key-123",
        "aws_secret_access_key": "file-secret-key-456",
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


def test_the_ecosystems_variables_work_as_prefect_mlflow_and_boto3_users_expect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ecosystem = {
        "PREFECT_API_URL": "http://prefect.team:4200/api",
        "MLFLOW_TRACKING_URI": "http://mlflow.team:5000",
        "AWS_ACCESS_KEY_ID": "eco-access-key-1",
        "AWS_SECRET_ACCESS_KEY": "eco-secret-key-2",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "http://all-services.team:9000",
        "AWS_ENDPOINT_URL_S3": "http://s3.team:9000",  # botocore: the service-specific one wins
    }
    for name, value in ecosystem.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(home=tmp_path, artifact_root="s3://team-bucket/moe2dense")

    assert settings.prefect_api_url == "http://prefect.team:4200/api"
    assert settings.resolved_mlflow_tracking_uri == "http://mlflow.team:5000"
    client = boto3.client("s3", **settings.s3_client_kwargs())
    assert client.meta.endpoint_url == "http://s3.team:9000" and client.meta.region_name == "eu-central-1"
    assert client._request_signer._credentials.access_key == "eco-access-key-1"
    environ = {"PREFECT_API_URL": "http://prefect.team:4200/api"}
    settings.apply_environment(environ)  # the user's server is kept, not replaced by a temporary API
    assert environ["PREFECT_API_URL"] == "http://prefect.team:4200/api"
    assert environ["MLFLOW_TRACKING_URI"] == "http://mlflow.team:5000"
    assert sorted(settings.secret_values()) == ["eco-access-key-1", "eco-secret-key-2"]

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert load_settings().s3_endpoint_url == "http://all-services.team:9000"


def test_moe2dense_settings_and_the_settings_file_override_the_ecosystems_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "PREFECT_API_URL": "http://eco:4200/api",
        "MLFLOW_TRACKING_URI": "http://eco-mlflow:5000",
        "AWS_DEFAULT_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL_S3": "http://eco-s3:9000",
        "AWS_SECRET_ACCESS_KEY": "eco-secret-of-another-account",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MOE2DENSE_MLFLOW_TRACKING_URI", "http://m2d-mlflow:5000")
    monkeypatch.setenv("MOE2DENSE_S3_REGION", "us-west-2")
    monkeypatch.setenv("MOE2DENSE_AWS_ACCESS_KEY_ID", "m2d-access-key")
    settings = load_settings()
    assert settings.resolved_mlflow_tracking_uri == "http://m2d-mlflow:5000"
    assert settings.s3_region == "us-west-2"
    assert settings.s3_endpoint_url == "http://eco-s3:9000"  # not overridden: the ecosystem's
    # credentials are one set: a MOE2DENSE_ key is never paired with another account's AWS_ secret
    assert settings.aws_secret_access_key is None

    path = tmp_path / "team.yaml"
    path.write_text(TEAM_FILE)
    from_file = load_settings(path)
    assert from_file.prefect_api_url == "http://prefect:4200/api"  # the file beats PREFECT_API_URL
    assert from_file.s3_endpoint_url == "http://minio:9000"
    assert from_file.resolved_mlflow_tracking_uri == "http://m2d-mlflow:5000"  # MOE2DENSE_ env beats the file

    monkeypatch.setenv("MOE2DENSE_PREFECT_API_URL", "")  # explicitly the temporary in-process API
    embedded = load_settings(home=tmp_path)
    assert embedded.prefect_api_url is None
    environ = {"PREFECT_API_URL": "http://eco:4200/api", "UNRELATED": "kept"}
    embedded.apply_environment(environ)
    assert "PREFECT_API_URL" not in environ and environ["UNRELATED"] == "kept"


def test_the_active_prefect_profile_gives_the_api_url_unless_the_environment_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `prefect config set PREFECT_API_URL=…` writes: ~/.prefect/profiles.toml, active profile."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "team"\n'
        '[profiles.team]\nPREFECT_API_URL = "http://team:4200/api"\nPREFECT_API_KEY = "pnu_profile_key"\n'
        '[profiles.other]\nPREFECT_API_URL = "http://other:4200/api"\n'
    )
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    settings = load_settings()
    assert settings.prefect_api_url == "http://team:4200/api"
    assert settings.secret_values() == ["pnu_profile_key"]
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert load_settings().prefect_api_url == "http://other:4200/api"
    monkeypatch.setenv("PREFECT_API_URL", "http://from-env:4200/api")
    assert load_settings().prefect_api_url == "http://from-env:4200/api"


def test_environment_carries_absolute_local_folders_for_child_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's flow run starts in a temporary folder: relative folders must not follow it there."""
    monkeypatch.chdir(tmp_path)
    env = load_settings(home=Path("state"), cache_dir=Path("cache")).environment()
    assert env["MOE2DENSE_HOME"] == str(tmp_path.resolve() / "state")
    assert env["MOE2DENSE_ARTIFACT_ROOT"] == str(tmp_path.resolve() / "state" / "artifacts")
    assert env["MOE2DENSE_CACHE_DIR"] == str(tmp_path.resolve() / "cache")
    assert "MOE2DENSE_ARTIFACT_ROOT" not in load_settings(artifact_root="s3://bucket/prefix").environment()


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


def test_mlflow_http_retries_are_bounded_settings_and_mlflows_own_variables_are_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings().environment()
    assert (defaults["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], defaults["MLFLOW_HTTP_REQUEST_TIMEOUT"]) == (
        "4",
        "20",
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")  # an MLflow user's own setting
    assert load_settings().environment()["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    monkeypatch.setenv("MOE2DENSE_MLFLOW_HTTP_MAX_RETRIES", "1")  # overrides it, as every MOE2DENSE_* does
    assert load_settings().environment()["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
