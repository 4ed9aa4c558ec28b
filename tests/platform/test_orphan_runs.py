"""Runs of a killed process end KILLED; runs of a live one never do (moe2dense_platform/orphan_runs.py).

Real parts: a SQLite MLflow store in a temporary folder, real child processes holding runs opened by the
project's own `parent_run` / `stage_run` (one SIGKILLed, one alive), the session's real Prefect server (a
flow run's id tagged on its runs; runs owned by another host), and the `moe2dense reconcile-runs` command.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed, Running
from typer.testing import CliRunner

from flows.cli import app
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.process_owner import Owner, current_owner
from moe2dense_platform.orphan_runs import TAG_ORPHANED, end_orphaned_runs
from moe2dense_platform.processes import free_port
from moe2dense_platform.recipe_io import load_recipe
from moe2dense_platform.redaction import Redactor
from moe2dense_platform.run_owner import (
    TAG_OWNER_BOOT_ID,
    TAG_OWNER_PID,
    TAG_OWNER_START_TICKS,
    owner_from_tags,
    owner_tags,
)
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import (
    TAG_PREFECT_FLOW_RUN,
    TAG_RECIPE_DIGEST,
    ensure_experiment,
    parent_run,
    stage_run,
    tracking_client,
)

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="process owners need Linux /proc"
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = PROJECT_ROOT / "configs" / "demo.yaml"


def tracking_settings(home: Path) -> Settings:
    """The SQLite tracking store and artifact folder under `home`, whatever the environment names."""
    return Settings(
        home=home,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        mlflow_artifact_location=(home / "mlartifacts").as_uri(),
    )


@pytest.fixture(scope="module")
def tracking_home(tmp_path_factory) -> Path:
    """One tracking store for the module (its schema is made once); each test uses its own experiment."""
    return tmp_path_factory.mktemp("orphan_runs")


@contextmanager
def tracked_runs(home: Path, experiment: str) -> Iterator[tuple[str, str]]:
    """(parent run id, stage run id) opened by the project's tracking, as a flow opens them."""
    settings = tracking_settings(home)
    client = tracking_client(settings)
    recipe = load_recipe(DEMO_RECIPE, [f"tracking.experiment={experiment}"])
    location = settings.resolved_mlflow_artifact_location
    with (
        parent_run(client, recipe, Redactor(), artifact_location=location) as parent,
        stage_run(client, parent.run_id, "calibrate", Redactor()) as stage,
    ):
        yield parent.run_id, stage.run_id


def hold_tracked_runs(home: str, experiment: str, ids_file: str) -> None:
    """Child process: open a parent and a stage run, write their ids to `ids_file`, wait to be killed."""
    with tracked_runs(Path(home), experiment) as ids:
        atomic_write_text(ids_file, json.dumps(ids))
        time.sleep(600)


def start_holder(home: Path, experiment: str, workdir: Path, name: str) -> tuple[subprocess.Popen, list[str]]:
    """A child process holding tracked runs, once they exist: (process, [parent run id, stage run id])."""
    ids_file, log = workdir / f"{name}.json", workdir / f"{name}.log"
    code = f"import sys; from {__name__} import hold_tracked_runs; hold_tracked_runs(*sys.argv[1:])"
    with open(log, "wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(home), experiment, str(ids_file)],
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while not ids_file.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"{name} never opened its runs (exit {child.wait()}): {log.read_text()[-4000:]}")
        time.sleep(0.1)
    return child, json.loads(ids_file.read_text())


def statuses(client: MlflowClient, run_ids: list[str]) -> list[str]:
    return [client.get_run(run_id).info.status for run_id in run_ids]


def bare_run(client: MlflowClient, experiment_id: str, owner: Owner, flow_run_id: str | None = None) -> str:
    """A RUNNING run with the tags a moe2dense run of `owner` (in Prefect flow run `flow_run_id`) carries."""
    tags = {TAG_RECIPE_DIGEST: "0" * 64, **owner_tags(owner)}
    if flow_run_id is not None:
        tags[TAG_PREFECT_FLOW_RUN] = flow_run_id
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_the_owner_tags_name_this_process_and_an_unknown_part_leaves_it_unjudged() -> None:
    here = current_owner()
    assert here.pid == os.getpid() and here.host == socket.gethostname()
    assert owner_from_tags(owner_tags(here)) == here and here.checkable(here)
    assert owner_from_tags({TAG_RECIPE_DIGEST: "0" * 64}) is None  # a run made before owners were tagged
    assert owner_from_tags({**owner_tags(here), TAG_OWNER_PID: "0"}) is None
    no_boot = {key: value for key, value in owner_tags(here).items() if key != TAG_OWNER_BOOT_ID}
    bad_start = {**owner_tags(here), TAG_OWNER_START_TICKS: "17s"}
    for tags in (no_boot, bad_start):
        owner = owner_from_tags(tags)
        assert owner.pid == here.pid and not owner.checkable(here)


@pytest.mark.slow
def test_runs_of_a_killed_process_end_killed_when_the_next_run_starts_and_live_ones_stay(
    tracking_home: Path, tmp_path: Path
) -> None:
    experiment = "orphans-sigkill"
    children: list[subprocess.Popen] = []
    try:
        killed, killed_runs = start_holder(tracking_home, experiment, tmp_path, "killed")
        children.append(killed)
        alive, alive_runs = start_holder(tracking_home, experiment, tmp_path, "alive")
        children.append(alive)
        client = tracking_client(tracking_settings(tracking_home))
        for run_id in killed_runs:
            owner = owner_from_tags(client.get_run(run_id).data.tags)
            assert owner.pid == killed.pid and owner.checkable()

        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
        assert statuses(client, killed_runs) == ["RUNNING", "RUNNING"]  # nobody ended them

        with tracked_runs(tracking_home, experiment) as new_runs:
            assert statuses(client, killed_runs) == ["KILLED", "KILLED"]
            assert statuses(client, alive_runs) == ["RUNNING", "RUNNING"]
            assert statuses(client, list(new_runs)) == ["RUNNING", "RUNNING"]
            reason = client.get_run(killed_runs[0]).data.tags[TAG_ORPHANED]
            assert reason == f"its process {killed.pid} on {socket.gethostname()} is gone"
        assert statuses(client, list(new_runs)) == ["FINISHED", "FINISHED"]
        assert statuses(client, alive_runs) == ["RUNNING", "RUNNING"]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@flow(name="orphan-runs-tracked")
def tracked_flow(home: str, experiment: str) -> list[str]:
    """[its flow run id, parent run id, stage run id]: runs opened with no flow run id given."""
    with tracked_runs(Path(home), experiment) as ids:
        return [flow_run.id, *ids]


def test_runs_opened_inside_a_prefect_flow_run_are_tagged_with_it(
    tracking_home: Path, prefect_server
) -> None:
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        flow_run_id, *run_ids = tracked_flow(str(tracking_home), "orphans-in-a-flow")
    client = tracking_client(tracking_settings(tracking_home))
    assert [client.get_run(run_id).data.tags[TAG_PREFECT_FLOW_RUN] for run_id in run_ids] == [flow_run_id] * 2


@pytest.fixture
def elsewhere_flow_runs(prefect_server):
    """Two flow runs on the session's real Prefect server, as another host's flows leave them:
    {"crashed": id, "running": id}; this process's Prefect client points at that server meanwhile."""

    @flow(name="orphan-runs-elsewhere")
    def elsewhere() -> None:
        """Never called: the flow the flow runs belong to."""

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as prefect:
            crashed = prefect.create_flow_run(elsewhere, state=Crashed())
            running = prefect.create_flow_run(elsewhere, state=Running())
        yield {"crashed": str(crashed.id), "running": str(running.id)}


def test_runs_owned_elsewhere_end_killed_only_when_prefect_reports_their_flow_run_over(
    tracking_home: Path, elsewhere_flow_runs: dict[str, str]
) -> None:
    settings = tracking_settings(tracking_home)
    client = tracking_client(settings)
    experiment_id = ensure_experiment(client, "orphans-elsewhere", settings.resolved_mlflow_artifact_location)
    here = current_owner()
    other_machine = Owner("another-host", "another-boot", "pid:[1]", 4242, 17)
    other_container = replace(here, pid_namespace="pid:[1]", start_ticks=1)  # same host name and boot
    runs = {
        "crashed": bare_run(client, experiment_id, other_machine, elsewhere_flow_runs["crashed"]),
        "running": bare_run(client, experiment_id, other_machine, elsewhere_flow_runs["running"]),
        "unknown to Prefect": bare_run(client, experiment_id, other_machine, str(uuid.uuid4())),
        "no flow run": bare_run(client, experiment_id, other_container),
    }
    ended = end_orphaned_runs(client, [experiment_id])
    assert ended == {runs["crashed"]: f"its Prefect flow run {elsewhere_flow_runs['crashed']} is CRASHED"}
    assert statuses(client, list(runs.values())) == ["KILLED", "RUNNING", "RUNNING", "RUNNING"]


def test_an_unreachable_prefect_api_leaves_runs_owned_elsewhere_and_the_new_run_starts(
    tracking_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    experiment = "orphans-prefect-down"
    settings = tracking_settings(tracking_home)
    client = tracking_client(settings)
    experiment_id = ensure_experiment(client, experiment, settings.resolved_mlflow_artifact_location)
    other_machine = Owner("another-host", "another-boot", "pid:[1]", 4242, 17)
    orphan_elsewhere = bare_run(client, experiment_id, other_machine, str(uuid.uuid4()))
    nothing_listens = f"http://127.0.0.1:{free_port()}/api"
    with (
        temporary_settings(updates={PREFECT_API_URL: nothing_listens}),
        caplog.at_level(logging.WARNING, logger="moe2dense_platform.orphan_runs"),
        tracked_runs(tracking_home, experiment) as new_runs,
    ):
        assert statuses(client, list(new_runs)) == ["RUNNING", "RUNNING"]
    assert statuses(client, [orphan_elsewhere]) == ["RUNNING"]
    assert "the Prefect API did not answer" in caplog.text and "left as they are" in caplog.text


def test_the_reconcile_command_ends_the_runs_of_a_gone_process(tracking_home: Path, monkeypatch) -> None:
    settings = tracking_settings(tracking_home)
    for name, value in {
        "MOE2DENSE_HOME": settings.home,
        "MOE2DENSE_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MOE2DENSE_MLFLOW_ARTIFACT_LOCATION": settings.mlflow_artifact_location,
    }.items():
        monkeypatch.setenv(name, str(value))
    client = tracking_client(settings)
    experiment_id = ensure_experiment(client, "orphans-command", settings.resolved_mlflow_artifact_location)
    here = current_owner()
    reused_pid = bare_run(client, experiment_id, replace(here, start_ticks=here.start_ticks + 1))
    alive = bare_run(client, experiment_id, here)

    shown = CliRunner().invoke(app, ["reconcile-runs", "--experiment", "orphans-command"])
    assert shown.exit_code == 0, shown.output
    assert f"ended KILLED: {reused_pid}" in shown.output and "1 orphaned run(s) ended" in shown.output
    assert statuses(client, [reused_pid, alive]) == ["KILLED", "RUNNING"]
    missing = CliRunner().invoke(app, ["reconcile-runs", "--experiment", "no-such-experiment"])
    assert missing.exit_code == 1 and "no experiment 'no-such-experiment'" in missing.output
