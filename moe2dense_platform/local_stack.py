"""`moe2dense stack`: the team stack as local processes on one machine, no Docker, 127.0.0.1 only: the
Prefect server, the MLflow server, optionally an S3-compatible server (moto's), and a process worker.

Everything lives under one folder, `<home>/stack/`:
    stack.json            the ports and options the stack was started with (status and down read it)
    settings.yaml         moe2dense settings pointing at these servers: `MOE2DENSE_SETTINGS_FILE=<it>`
    <service>.pid / .log  each service's process id and output
    prefect/ mlflow/ s3/ worker/   each service's working folder and data (databases, MLflow artifacts)

`up` starts what is not running, in the order below, each checked before the next starts:
    prefect  `prefect server start`          ready: GET /api/health answers 200
    s3       `moto_server` (with --s3)        ready: GET /moto-api/ answers 200; then the bucket is created
    mlflow   `mlflow server`                  ready: GET /health answers 200 (artifacts: the bucket or a folder)
    worker   `prefect worker start` (process) ready: the Prefect API lists it ONLINE in its pool
A running service is left alone, so `up` twice starts nothing twice; a port another program holds is an
error naming the service; a stack running with other options must be taken down first. `down` stops the
services in reverse order (SIGTERM to each process group, SIGKILL after a timeout). moto keeps its
objects in memory: they are gone after `down` (MinIO in infra/compose.yaml keeps them).

Servers start with the PREFECT_*, MLFLOW_*, AWS_* and MOE2DENSE_* variables of the caller removed, so a
user's own settings cannot point a stack server elsewhere; the worker gets the stack's settings.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import yaml

from moe2dense_platform.processes import (
    LOCALHOST,
    ProcessError,
    http_json,
    http_ok,
    pid_alive,
    port_in_use,
    start_process,
    stop_group,
    wait_until,
)
from moe2dense_platform.settings import Settings

BIN = Path(sys.executable).parent
SERVER_PREFIXES = ("PREFECT_", "MLFLOW_", "AWS_", "MOE2DENSE_")
STACK_AWS_KEYS = {"aws_access_key_id": "stack-access-key", "aws_secret_access_key": "stack-secret-key"}
WORKER_NAME = "moe2dense-stack"
READY_TIMEOUT_S = {"prefect": 180.0, "s3": 30.0, "mlflow": 120.0, "worker": 90.0}


class StackError(RuntimeError):
    """The stack cannot be started as asked (port taken, other options running, program missing)."""


@dataclass(frozen=True)
class StackConfig:
    """Ports (of 127.0.0.1) and options; `s3_port=None` runs no S3 server (artifacts in a local folder)."""

    prefect_port: int = 4200
    mlflow_port: int = 5000
    s3_port: int | None = None
    work_pool: str = "moe2dense-process"
    bucket: str = "moe2dense"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{LOCALHOST}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOCALHOST}:{self.mlflow_port}"

    @property
    def s3_url(self) -> str | None:
        return None if self.s3_port is None else f"http://{LOCALHOST}:{self.s3_port}"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    url: str
    log: Path


def isolated_environment(**extra: str) -> dict[str, str]:
    """This process's environment without PREFECT_*, MLFLOW_*, AWS_* and MOE2DENSE_* variables, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(SERVER_PREFIXES)}
    return {**env, "DO_NOT_TRACK": "true", **extra}


def worker_argv(pool: str, name: str | None = None) -> list[str]:
    """`prefect worker start` for a process pool (created by the worker when missing)."""
    argv = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    return [*argv, "--name", name] if name else argv


class LocalStack:
    """The stack under `root` (`<home>/stack`)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.yaml"

    def saved_config(self) -> StackConfig | None:
        path = self.root / "stack.json"
        return StackConfig(**json.loads(path.read_text())) if path.is_file() else None

    def pid(self, name: str) -> int | None:
        path = self.root / f"{name}.pid"
        return int(path.read_text()) if path.is_file() else None

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and pid_alive(pid)

    def service_names(self, config: StackConfig) -> list[str]:
        return ["prefect", *(["s3"] if config.s3_port is not None else []), "mlflow", "worker"]

    # ---- up ------------------------------------------------------------------------------------
    def up(self, config: StackConfig) -> list[ServiceStatus]:
        """Start every service that is not running; returns the status of all of them."""
        saved = self.saved_config()
        names = self.service_names(saved or config)
        if saved is not None and saved != config and any(self.running(name) for name in names):
            raise StackError(
                f"the stack in {self.root} runs with {asdict(saved)}; `moe2dense stack down` first to change it"
            )
        if config.s3_port is not None and not (BIN / "moto_server").exists():
            raise StackError(f"--s3 needs moto's server ({BIN / 'moto_server'}): pip install 'moto[server]'")
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.root / "stack.json", json.dumps(asdict(config), indent=2))
        write_atomically(self.settings_file, yaml.safe_dump(self.stack_settings(config), sort_keys=False))
        for name in self.service_names(config):
            if not self.running(name):
                self.start(name, config)
        return self.status()

    def stack_settings(self, config: StackConfig) -> dict[str, str]:
        """The moe2dense settings of a client (CLI or worker) of this stack."""
        settings = {"prefect_api_url": config.prefect_api_url, "mlflow_tracking_uri": config.mlflow_url}
        if config.s3_url is not None:
            settings |= {
                "artifact_root": f"s3://{config.bucket}/artifacts",
                "s3_endpoint_url": config.s3_url,
                **STACK_AWS_KEYS,
            }
        return settings

    def start(self, name: str, config: StackConfig) -> None:
        port = {"prefect": config.prefect_port, "s3": config.s3_port, "mlflow": config.mlflow_port}.get(name)
        if port is not None and port_in_use(port):
            raise StackError(
                f"port {port} of {LOCALHOST} ({name}) is in use by another program: choose another"
            )
        argv, env, ready = self.command(name, config)
        log = self.root / f"{name}.log"
        started = datetime.now().astimezone()
        process = start_process(argv, env, self.root / name, log)
        (self.root / f"{name}.pid").write_text(str(process.pid))
        try:
            wait_until(lambda: ready(started), process.pid, name, log, READY_TIMEOUT_S[name])
            if name == "s3":
                self.create_bucket(config)
        except ProcessError:
            stop_group(process.pid)
            (self.root / f"{name}.pid").unlink()
            raise

    def command(self, name: str, config: StackConfig):
        """(argv, environment, ready(started) check) of one service."""
        data = self.root / name
        if name == "prefect":
            env = isolated_environment(
                PREFECT_HOME=str(data / "home"),
                PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{data / 'prefect.db'}",
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_UI_API_URL=config.prefect_api_url,  # the UI's default is port 4200, not --port
            )
            argv = [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                LOCALHOST,
                "--port",
                str(config.prefect_port),
            ]
            return argv, env, lambda started: http_ok(f"{config.prefect_api_url}/health")
        if name == "s3":
            argv = [str(BIN / "moto_server"), "-H", LOCALHOST, "-p", str(config.s3_port)]
            return argv, isolated_environment(), lambda started: http_ok(f"{config.s3_url}/moto-api/")
        if name == "mlflow":
            destination, env = str(data / "artifacts"), isolated_environment()
            if config.s3_url is not None:
                destination = f"s3://{config.bucket}/mlflow"
                env |= {"MLFLOW_S3_ENDPOINT_URL": config.s3_url, **stack_aws_environment()}
            argv = [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{data / 'mlflow.db'}",
                "--artifacts-destination",
                destination,
                "--host",
                LOCALHOST,
                "--port",
                str(config.mlflow_port),
                "--workers",
                "1",
            ]
            return argv, env, lambda started: http_ok(f"{config.mlflow_url}/health")
        settings = Settings(
            home=self.root.parent, **self.stack_settings(config)
        )  # not the caller's MOE2DENSE_*
        env = isolated_environment(MOE2DENSE_SETTINGS_FILE=str(self.settings_file), **settings.environment())
        return (
            worker_argv(config.work_pool, WORKER_NAME),
            env,
            lambda started: worker_online(config.prefect_api_url, config.work_pool, WORKER_NAME, started),
        )

    def create_bucket(self, config: StackConfig) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=config.s3_url,
            region_name="us-east-1",
            aws_access_key_id=STACK_AWS_KEYS["aws_access_key_id"],
            aws_secret_access_key=STACK_AWS_KEYS["aws_secret_access_key"],
        )
        client.create_bucket(Bucket=config.bucket)

    # ---- status / down ---------------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        config = self.saved_config() or StackConfig()
        urls = {
            "prefect": f"http://{LOCALHOST}:{config.prefect_port} (API {config.prefect_api_url})",
            "s3": config.s3_url or "",
            "mlflow": config.mlflow_url,
            "worker": f"pool {config.work_pool}",
        }
        return [
            ServiceStatus(name, self.pid(name), self.running(name), urls[name], self.root / f"{name}.log")
            for name in self.service_names(config)
        ]

    def down(self) -> list[str]:
        """Stop every running service (worker first); returns the names of those stopped."""
        config = self.saved_config() or StackConfig()
        stopped = []
        for name in reversed(self.service_names(config)):
            pid = self.pid(name)
            if pid is not None and pid_alive(pid):
                stop_group(pid)
                stopped.append(name)
            (self.root / f"{name}.pid").unlink(missing_ok=True)
        return stopped


def worker_online(api_url: str, pool: str, name: str, since: datetime) -> bool:
    """True when the Prefect API lists worker `name` ONLINE in `pool` with a heartbeat since `since`."""
    try:
        workers = http_json(f"{api_url}/work_pools/{pool}/workers/filter", {})
    except OSError:
        return False
    return any(
        worker["name"] == name
        and worker["status"] == "ONLINE"
        and datetime.fromisoformat(worker["last_heartbeat_time"]) >= since
        for worker in workers or []
    )


def stack_aws_environment() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": STACK_AWS_KEYS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": STACK_AWS_KEYS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
