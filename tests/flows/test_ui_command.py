"""The Prefect UI and the links into it.

- `moe2dense ui --prefect-port P`: the Prefect UI it serves talks to the API on P (its `/ui-settings`),
  even when P is not Prefect's default port and the caller's environment names another API; SIGTERM stops
  it and both its servers (with every worker process they started).
- A flow's MLflow parent run links its Prefect flow run at `<UI>/runs/flow-run/<id>`, the route the
  Prefect 3 UI serves (`prefect.runtime.flow_run.ui_url` gives the older `/flow-runs/flow-run/<id>`);
  with no UI (the temporary in-process API) there is no link, rather than a `None/...` one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, PREFECT_UI_URL, temporary_settings

from moe2dense_platform.flow_parent import flow_parent_run
from moe2dense_platform.local_stack import isolated_environment
from moe2dense_platform.processes import free_port, http_json, http_ok, port_in_use, wait_until
from moe2dense_platform.recipe_io import load_recipe
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import (
    TAG_PREFECT_FLOW_RUN,
    TAG_PREFECT_FLOW_RUN_URL,
    prefect_flow_run_url,
    tracking_client,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_moe2dense_ui_serves_a_prefect_ui_talking_to_its_own_port_and_stops_cleanly(tmp_path: Path) -> None:
    prefect_port, mlflow_port = free_port(), free_port()
    home, elsewhere = str(tmp_path / "home"), "http://elsewhere.invalid:4200/api"
    env = isolated_environment(MOE2DENSE_HOME=home, PREFECT_UI_API_URL=elsewhere)
    command = [
        sys.executable,
        "-c",
        "from flows.cli import app; app()",
        "ui",
        "--prefect-port",
        str(prefect_port),
        "--mlflow-port",
        str(mlflow_port),
    ]
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        cli = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        ui = f"http://127.0.0.1:{prefect_port}"
        servers = (f"{ui}/api/health", f"http://127.0.0.1:{mlflow_port}/health")
        wait_until(lambda: all(map(http_ok, servers)), cli.pid, "moe2dense ui", log, timeout_s=180)
        assert http_json(f"{ui}/ui-settings")["api_url"] == f"{ui}/api"

        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=120) == 0, log.read_text()[-4000:]
        assert not port_in_use(prefect_port) and not port_in_use(mlflow_port)  # both servers are gone
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)


@flow
def opens_a_parent_run(recipe) -> str:
    """The start every pipeline flow shares (moe2dense_platform.flow_parent), and nothing else."""
    with flow_parent_run(recipe, "link-test") as (_, parent):
        return parent.run_id


def test_the_parent_run_links_the_flow_run_page_the_prefect_ui_serves(prefect_server, tmp_path: Path) -> None:
    recipe = load_recipe(PROJECT_ROOT / "configs" / "demo.yaml", [f"source.model={tmp_path}"])
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("MOE2DENSE_")]:
            patch.delenv(name)
        patch.setenv("MOE2DENSE_HOME", str(tmp_path / "home"))
        patch.setenv("MOE2DENSE_PREFECT_API_URL", prefect_server)
        with temporary_settings(
            updates={PREFECT_API_URL: prefect_server, PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "results")}
        ):
            ui = PREFECT_UI_URL.value()
            run = tracking_client(Settings()).get_run(opens_a_parent_run(recipe))

    flow_run_id = run.data.tags[TAG_PREFECT_FLOW_RUN]
    assert ui == prefect_server.removesuffix("/api")
    assert run.data.tags[TAG_PREFECT_FLOW_RUN_URL] == f"{ui}/runs/flow-run/{flow_run_id}"

    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_UI_URL: None}):
        assert prefect_flow_run_url(flow_run_id) is None
