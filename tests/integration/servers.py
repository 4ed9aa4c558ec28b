"""Integration tier: real servers as plain processes on free ports of 127.0.0.1, once per session.

- `s3_server`: moto's S3 API (`moto_server -H 127.0.0.1 -p P`, ready in ~0.5 s) with one bucket;
- `mlflow_server`: `mlflow server` with a SQLite backend and `--artifacts-destination s3://<bucket>/mlflow`
  on that S3 API (`MLFLOW_S3_ENDPOINT_URL` and dummy AWS keys in its environment; ready in ~7 s);
- `prefect_server`: `prefect server start` with its own PREFECT_HOME and SQLite database (~13 s).

Each fixture starts on first use, waits for the server's health endpoint, yields its URLs, and at the
end of the session stops the whole process group (its folder is under pytest's basetemp, which pytest
prunes). A server that dies or never
becomes healthy fails the test with the tail of its log. Every test in this folder is marked
`integration`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from moe2dense_platform.local_stack import isolated_environment
from moe2dense_platform.processes import (
    ProcessError,
    free_port,
    http_ok,
    log_tail,
    start_process,
    stop_group,
    wait_until,
)

BIN = Path(sys.executable).parent
HERE = Path(__file__).parent
BUCKET = "moe2dense-it"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "it-dummy-access-key",
    "AWS_SECRET_ACCESS_KEY": "it-dummy-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


SERVER_FIXTURES = {"s3_server", "mlflow_server", "prefect_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `integration` every test in this folder and every test that (transitively) uses a server."""
    for item in items:
        uses_server = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_server or HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@dataclass
class ServerProcess:
    """A started server (moe2dense_platform/processes.py); readiness failures fail the test with the server's log."""

    name: str
    pid: int
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return log_tail(self.log_path, chars)

    def wait_ready(self, ready, timeout_s: float) -> None:
        try:
            wait_until(ready, self.pid, self.name, self.log_path, timeout_s)
        except ProcessError as error:
            self.stop()
            pytest.fail(str(error))

    def wait_healthy(self, url: str, timeout_s: float) -> None:
        self.wait_ready(lambda: http_ok(url), timeout_s)

    def stop(self) -> None:
        stop_group(self.pid, timeout_s=15)


def start_server(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> ServerProcess:
    """Start `argv` in its own process group (so stop() reaches its workers), logging to workdir."""
    process = start_process(argv, env, workdir, workdir / f"{name}.log")
    return ServerProcess(name, process.pid, workdir / f"{name}.log")


def server_env(**extra: str) -> dict[str, str]:
    return isolated_environment(**DUMMY_AWS, **extra)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    access_key_id: str = DUMMY_AWS["AWS_ACCESS_KEY_ID"]
    secret_access_key: str = DUMMY_AWS["AWS_SECRET_ACCESS_KEY"]
    region: str = DUMMY_AWS["AWS_DEFAULT_REGION"]

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str
    artifacts_destination: str


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 API on a free port, with the bucket `BUCKET` created."""
    port = free_port()
    server = start_server(
        "moto_server",
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        server_env(),
        tmp_path_factory.mktemp("moto"),
    )
    try:
        server.wait_healthy(f"http://127.0.0.1:{port}/moto-api/", timeout_s=30)
        s3 = S3Server(endpoint_url=f"http://127.0.0.1:{port}", bucket=BUCKET)
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server`: SQLite backend, artifacts proxied to s3://BUCKET/mlflow on the moto server."""
    port, workdir = free_port(), tmp_path_factory.mktemp("mlflow")
    destination = f"s3://{s3_server.bucket}/mlflow"
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        destination,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = start_server(
        "mlflow_server", argv, server_env(MLFLOW_S3_ENDPOINT_URL=s3_server.endpoint_url), workdir
    )
    try:
        server.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=90)
        yield MlflowServer(tracking_uri=f"http://127.0.0.1:{port}", artifacts_destination=destination)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a free port; yields its API URL (`http://127.0.0.1:P/api`)."""
    port, workdir = free_port(), tmp_path_factory.mktemp("prefect")
    env = server_env(
        PREFECT_HOME=str(workdir / "home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{workdir / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = start_server("prefect_server", argv, env, workdir)
    try:
        server.wait_healthy(f"http://127.0.0.1:{port}/api/health", timeout_s=120)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.stop()
