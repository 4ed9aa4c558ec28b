"""Flow tests: the integration fixtures (real Prefect, MLflow and S3 servers) and a fake model hub."""

from __future__ import annotations

import os

import pytest

from tests.flows.fake_hub import RELEASES, FakeHub


@pytest.fixture
def fake_hub():
    with FakeHub(RELEASES) as hub:
        yield hub


@pytest.fixture(scope="module")
def team_stack(prefect_server, mlflow_server, s3_server, tmp_path_factory):
    """Per test module (the environment is restored afterwards, so later modules see the defaults):
    point moe2dense (settings from the environment) and this process's Prefect client at the real
    Prefect server, MLflow server and S3 API; yields the Settings tasks will read."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    from moe2dense_platform.settings import Settings

    home = tmp_path_factory.mktemp("moe2dense_home")
    env = {
        "MOE2DENSE_HOME": str(home),
        "MOE2DENSE_PREFECT_API_URL": prefect_server,
        "MOE2DENSE_MLFLOW_TRACKING_URI": mlflow_server.tracking_uri,
        "MOE2DENSE_ARTIFACT_ROOT": f"s3://{s3_server.bucket}/artifacts",
        "MOE2DENSE_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "MOE2DENSE_AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "MOE2DENSE_AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
    }
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    updates = {
        PREFECT_API_URL: prefect_server,
        PREFECT_LOCAL_STORAGE_PATH: str(home / "results"),
        PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
    }
    try:
        with temporary_settings(updates=updates):
            yield Settings()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
