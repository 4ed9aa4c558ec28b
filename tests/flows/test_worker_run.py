"""A conversion started as the Prefect UI starts it, run by a real process worker in a folder of its own.

The worker is `moe2dense worker` as a Prefect / MLflow / boto3 user would start it: in an empty temporary
folder, configured by the ecosystem's own variables (PREFECT_API_URL, MLFLOW_TRACKING_URI, AWS_*) plus
the artifact root, with no MOE2DENSE_HOME (so its home is `.moe2dense` in that folder, which its flow
runs, each in yet another temporary folder, must still find). The run is created with the REST call the
UI's "Run" form makes, POST /deployments/{id}/create_flow_run, and must complete on that worker with the
full lineage: MLflow parent run, a nested run per stage, the registered model, its checkpoint in the bucket.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from flows.deploy import deploy_all
from moe2dense_platform.local_stack import isolated_environment, worker_online
from moe2dense_platform.processes import http_json, log_tail, start_process, stop_group, wait_until
from moe2dense_platform.storage import open_artifact_store
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_CHECKPOINT_URI,
    TAG_PREFECT_FLOW_RUN,
    TAG_STAGE,
    stage_runs,
    tracking_client,
)
from tests.integration.servers import BIN

pytestmark = pytest.mark.integration

POOL = "ui-run-it"
WORKER = "ui-run-it-worker"
STAGES = {
    "calibrate",
    "plan",
    "assemble",
    "evaluate-teacher",
    "evaluate-assembled",
    "distill",
    "evaluate-distilled",
    "register",
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def worker(prefect_server, mlflow_server, s3_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker_cwd")
    env = isolated_environment(
        PREFECT_API_URL=prefect_server,
        MLFLOW_TRACKING_URI=mlflow_server.tracking_uri,
        AWS_ACCESS_KEY_ID=s3_server.access_key_id,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_access_key,
        AWS_DEFAULT_REGION=s3_server.region,
        AWS_ENDPOINT_URL_S3=s3_server.endpoint_url,
        MOE2DENSE_ARTIFACT_ROOT=f"s3://{s3_server.bucket}/artifacts",
        PREFECT_WORKER_QUERY_SECONDS="2",  # poll often: the test waits for the run
    )
    log = folder / "worker.log"
    started = datetime.now().astimezone()
    process = start_process(
        [str(BIN / "moe2dense"), "worker", "--pool", POOL, "--name", WORKER], env, folder, log
    )
    try:
        wait_until(
            lambda: worker_online(prefect_server, POOL, WORKER, started), process.pid, "worker", log, 180
        )
        yield log
    finally:
        stop_group(process.pid)


def wait_for_flow_run(api_url: str, flow_run_id: str, worker_log, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = http_json(f"{api_url}/flow_runs/{flow_run_id}")
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(1)
    pytest.fail(
        f"flow run {flow_run_id} not finished after {timeout_s:.0f} s; worker log:\n{log_tail(worker_log)}"
    )


def test_a_run_created_as_the_ui_creates_it_completes_on_the_worker_with_full_lineage(
    team_stack, worker, tiny_teacher, s3_server, tmp_path
):
    recipe = tiny_teacher.recipe("name=ui-run", "calibration.seed=11", "tracking.registered_model=ui-dense")
    convert_id = deploy_all(work_pool=POOL, watch_cron=None, process_home=tmp_path / "deployer")[0]
    api = team_stack.prefect_api_url
    created = http_json(
        f"{api}/deployments/{convert_id}/create_flow_run",
        {"parameters": {"recipe": recipe.model_dump(mode="json")}},
    )
    run = wait_for_flow_run(api, created["id"], worker)
    assert run["state_type"] == "COMPLETED", f"{run['state']['message']}\nworker log:\n{log_tail(worker)}"
    assert run["work_pool_name"] == POOL

    client = tracking_client(team_stack)
    experiment = client.get_experiment_by_name(recipe.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_PREFECT_FLOW_RUN}` = '{run['id']}'")
    (parent,) = [r for r in runs if TAG_STAGE not in r.data.tags]
    stages = stage_runs(client, parent.info.run_id)  # nested runs, and linked runs of results cached earlier
    assert set(stages) >= STAGES and {r.info.status for r in stages.values()} == {"FINISHED"}
    (version,) = client.search_model_versions(
        f"name = 'ui-dense' and run_id = '{stages['register'].info.run_id}'"
    )
    assert version.tags[TAG_PREFECT_FLOW_RUN] == run["id"]
    checkpoint_uri = version.tags[TAG_CHECKPOINT_URI]
    assert checkpoint_uri.startswith(f"s3://{s3_server.bucket}/artifacts/")
    assert version.tags[TAG_CHECKPOINT_DIGEST]
    store = open_artifact_store(team_stack)
    checkpoint = store.fetch(store.ref_from_uri(checkpoint_uri), verify=True)  # every file against its sha256
    assert (checkpoint / "config.json").is_file()
