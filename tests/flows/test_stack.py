"""`moe2dense stack up|status|down` as a user runs it (the CLI in a subprocess), on free ports of 127.0.0.1:
every service health-checked, `up` twice starts nothing twice, a taken port is refused, `down` stops all."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from moe2dense_platform.local_stack import WORKER_NAME, isolated_environment
from moe2dense_platform.processes import free_port, http_json, http_ok, pid_alive
from tests.integration.servers import BIN

pytestmark = pytest.mark.integration
SERVICES = ("prefect", "s3", "mlflow", "worker")


def stack(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "moe2dense"), "stack", *args, "--home", str(home)],
        env=isolated_environment(COLUMNS="250"),
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )


def pids(home: Path) -> dict[str, int]:
    return {name: int((home / "stack" / f"{name}.pid").read_text()) for name in SERVICES}


def test_a_taken_port_is_refused_naming_the_service(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = stack(
            "up", "--prefect-port", str(port), "--mlflow-port", str(free_port()), home=tmp_path / "h"
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stdout and "(prefect) is in use" in result.stdout
    assert not (tmp_path / "h" / "stack" / "prefect.pid").exists()


def test_stack_up_is_idempotent_shows_every_service_and_down_stops_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    prefect_port, mlflow_port, s3_port = free_port(), free_port(), free_port()
    options = [
        "--prefect-port",
        str(prefect_port),
        "--mlflow-port",
        str(mlflow_port),
        "--s3",
        "--s3-port",
        str(s3_port),
    ]
    started: dict[str, int] = {}
    try:
        up = stack("up", *options, home=home)
        assert up.returncode == 0, up.stdout + up.stderr
        started = pids(home)
        assert all(pid_alive(pid) for pid in started.values())
        assert http_ok(f"http://127.0.0.1:{prefect_port}/api/health") and http_ok(
            f"http://127.0.0.1:{mlflow_port}/health"
        )
        settings = yaml.safe_load((home / "stack" / "settings.yaml").read_text())
        assert settings["prefect_api_url"] == f"http://127.0.0.1:{prefect_port}/api"
        # the Prefect UI in a browser calls the API its /ui-settings names (Prefect's default: port 4200)
        assert (
            http_json(f"http://127.0.0.1:{prefect_port}/ui-settings")["api_url"]
            == settings["prefect_api_url"]
        )
        assert settings["mlflow_tracking_uri"] == f"http://127.0.0.1:{mlflow_port}"
        assert settings["s3_endpoint_url"] == f"http://127.0.0.1:{s3_port}"
        bucket = settings["artifact_root"].split("/")[2]
        assert http_ok(f"http://127.0.0.1:{s3_port}/{bucket}")  # the artifact root's bucket exists
        workers = http_json(f"{settings['prefect_api_url']}/work_pools/moe2dense-process/workers/filter", {})
        assert [w["status"] for w in workers if w["name"] == WORKER_NAME] == ["ONLINE"]

        again = stack("up", home=home)  # no options: the last up's
        assert again.returncode == 0 and pids(home) == started
        status = stack("status", home=home)
        assert status.returncode == 0
        for name in SERVICES:
            assert name in status.stdout and str(started[name]) in status.stdout
        assert f"http://127.0.0.1:{mlflow_port}" in status.stdout and "moe2dense-process" in status.stdout
        changed = stack("up", "--prefect-port", str(free_port()), home=home)
        assert changed.returncode == 1 and "stack down" in changed.stdout
    finally:
        down = stack("down", home=home)
    assert down.returncode == 0 and "stopped: worker, mlflow, s3, prefect" in down.stdout
    assert not any(pid_alive(pid) for pid in started.values())
    after = stack("status", home=home)
    assert after.returncode == 1 and "running" not in after.stdout
