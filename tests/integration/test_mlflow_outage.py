"""The MLflow tracking server dies in the middle of a `moe2dense convert` run.

The behaviour chosen is a clear failure, not buffering (moe2dense_platform/tracking.py, "Tracking server
outage"): the flow fails within a bounded time (MLflow's retries of the request in flight, bounded by the
`mlflow_http_*` settings; no stage retry) with an error naming the tracking server; the artifact store
holds only complete, verified artifacts; and once the server is back (same backend store) re-running
completes with every metric there: each stage run the re-run's parent links (cached ones from the failed
run included) is FINISHED and holds exactly the metrics, at exactly the steps, of an uninterrupted
reference run (another home and store, nothing cached).

Everything is real: `mlflow server` (SQLite backend, artifacts proxied to a local folder) is SIGKILLed as
soon as the `plan` stage run appears (source and calibrate done, their results stored), and restarted on
the same port and database; each conversion is `moe2dense convert` in its own process against the
session's Prefect server, with a local artifact store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from moe2dense_platform.artifact_manifest import MANIFEST_SUFFIX, ArtifactRef
from moe2dense_platform.local_stack import isolated_environment
from moe2dense_platform.local_store import LocalArtifactStore
from moe2dense_platform.processes import free_port, group_alive, http_json, reap
from moe2dense_platform.recipe_io import recipe_to_yaml
from moe2dense_platform.result_storage import RESULTS_FOLDER
from moe2dense_platform.tracking import TAG_PREFECT_FLOW_RUN, TAG_STAGE, TAG_STAGE_RUN
from tests.flows.tiny_teacher import TinyTeacher
from tests.integration.servers import BIN, ServerProcess, server_env, start_server

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FAILS_WITHIN_S = 60.0
"""The flow run must be Failed this long after the server died, by its state on the Prefect server (with
the default settings ~15 s: MLflow's retries of the request in flight, then the flow fails at once)."""


def start_mlflow(workdir: Path, port: int) -> ServerProcess:
    """`mlflow server` on `port`; its SQLite database and artifact folder in `workdir` (kept on restart)."""
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = start_server("mlflow_server", argv, server_env(), workdir)
    server.wait_healthy(f"http://127.0.0.1:{port}/health", timeout_s=90)
    return server


def crash(server: ServerProcess) -> None:
    """SIGKILL the server's whole process group and wait until none of it runs."""
    os.killpg(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while group_alive(server.pid) and time.monotonic() < deadline:
        reap(server.pid)
        time.sleep(0.05)
    assert not group_alive(server.pid)


def start_convert(recipe_file: Path, home: Path, tracking_uri: str, prefect_api_url: str) -> subprocess.Popen:
    """`moe2dense convert RECIPE` in its own process; artifacts in `<home>/artifacts`; output to a pipe."""
    env = isolated_environment(
        MOE2DENSE_HOME=str(home),
        MOE2DENSE_MLFLOW_TRACKING_URI=tracking_uri,
        MOE2DENSE_PREFECT_API_URL=prefect_api_url,
    )
    command = [sys.executable, "-c", "from flows.cli import app; app()", "convert", str(recipe_file)]
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(child: subprocess.Popen, timeout_s: float) -> str:
    """The child's output once it exits; fails (killing it) when it runs longer than `timeout_s`."""
    try:
        output, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        pytest.fail(f"still running {timeout_s:.0f} s later; output:\n{output[-6000:]}")
    return output


def wait_for_stage_run(client: MlflowClient, experiment: str, stage: str, child: subprocess.Popen) -> str:
    """As soon as the experiment holds a run of `stage`: the Prefect flow run's id it is tagged with."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = client.get_experiment_by_name(experiment)
        runs = found and client.search_runs([found.experiment_id], f"tags.`{TAG_STAGE}` = '{stage}'")
        if runs:
            return runs[0].data.tags[TAG_PREFECT_FLOW_RUN]
        if child.poll() is not None:
            pytest.fail(f"the flow ended before a {stage} run appeared:\n{child.stdout.read()[-6000:]}")
        time.sleep(0.1)
    pytest.fail(f"no {stage} run appeared within 300 s")


def assert_store_complete(root: Path) -> int:
    """Nothing half-written: no staging leftover, every payload has its manifest and matches it byte for
    byte, every persisted task result is a complete JSON document. Returns the number of artifacts."""
    store = LocalArtifactStore(root)
    assert not any((root / ".staging").glob("*")), list((root / ".staging").iterdir())
    entries = [
        p.relative_to(root).as_posix() for p in root.glob("*/*/*") if p.parts[len(root.parts)][0].isalnum()
    ]
    payloads = {key for key in entries if not key.endswith(MANIFEST_SUFFIX)}
    manifests = {key[: -len(MANIFEST_SUFFIX)] for key in entries if key.endswith(MANIFEST_SUFFIX)}
    assert payloads == manifests, sorted(payloads ^ manifests)
    for key in payloads:
        store.verify(ArtifactRef.from_key(key))
    for result in (root / RESULTS_FOLDER).iterdir():
        json.loads(result.read_bytes())
    return len(payloads)


def stage_metrics(client: MlflowClient, experiment: str) -> dict[str, dict[str, list[int]]]:
    """{stage label: {metric: its steps}} of every stage run linked by the experiment's one FINISHED parent
    run (a result served from the cache links the run that computed it); each of those runs FINISHED."""
    found = client.get_experiment_by_name(experiment)
    parents = client.search_runs(
        [found.experiment_id], f"tags.`{TAG_STAGE}` IS NULL and attributes.status = 'FINISHED'"
    )
    assert len(parents) == 1, [p.info.run_id for p in parents]
    prefix, metrics = f"{TAG_STAGE_RUN}.", {}
    for tag, run_id in parents[0].data.tags.items():
        if tag.startswith(prefix):
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED", (tag, run.info.status)
            history = {key: client.get_metric_history(run_id, key) for key in run.data.metrics}
            metrics[tag[len(prefix) :]] = {
                key: sorted(m.step for m in points) for key, points in history.items()
            }
    return metrics


def write_recipe(path: Path, teacher: TinyTeacher, experiment: str) -> Path:
    recipe = teacher.recipe(
        f"tracking.experiment={experiment}",
        "tracking.registered_model=null",
        "distillation.train.log_every=1",
    )
    path.write_text(recipe_to_yaml(recipe))
    return path


def test_mlflow_down_mid_flow_fails_bounded_and_named_then_the_rerun_records_every_metric(
    prefect_server, random_teacher, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this test's own polling client: no waiting
    port, workdir = free_port(), tmp_path / "mlflow"
    tracking_uri = f"http://127.0.0.1:{port}"
    client = MlflowClient(tracking_uri)
    experiment = f"outage-{uuid.uuid4().hex[:8]}"
    teacher = TinyTeacher(*random_teacher)
    recipe = write_recipe(tmp_path / "recipe.yaml", teacher, experiment)
    home = tmp_path / "home"

    server = start_mlflow(workdir, port)
    try:
        child = start_convert(recipe, home, tracking_uri, prefect_server)
        flow_run_id = wait_for_stage_run(client, experiment, "plan", child)  # statistics stored by then
        crash(server)
        died = datetime.now(UTC)
        output = finish(child, 300)
        flow_run = http_json(f"{prefect_server}/flow_runs/{flow_run_id}")
        failed_after = (datetime.fromisoformat(flow_run["state"]["timestamp"]) - died).total_seconds()
        print(f"flow run Failed {failed_after:.1f} s after the server died; CLI exit code {child.returncode}")
        assert flow_run["state"]["type"] == "FAILED", output[-6000:]
        assert failed_after < FAILS_WITHIN_S, (failed_after, output[-6000:])
        assert child.returncode != 0, output[-6000:]
        assert f"MLflow tracking server {tracking_uri} is unreachable" in output, output[-6000:]
        assert assert_store_complete(home / "artifacts") > 0

        server = start_mlflow(workdir, port)  # back, with the same database and artifact folder
        rerun = finish(start_convert(recipe, home, tracking_uri, prefect_server), 600)
        assert "dense model:" in rerun, rerun[-6000:]
        assert_store_complete(home / "artifacts")
        recovered = stage_metrics(client, experiment)

        reference = write_recipe(tmp_path / "reference.yaml", teacher, f"{experiment}-reference")
        output = finish(start_convert(reference, tmp_path / "reference", tracking_uri, prefect_server), 600)
        assert "dense model:" in output, output[-6000:]
        expected = stage_metrics(client, f"{experiment}-reference")
    finally:
        server.stop()

    assert len(expected["distill"]["loss"]) > 1  # per-step metrics: the ones a buffer could lose
    assert recovered == expected
