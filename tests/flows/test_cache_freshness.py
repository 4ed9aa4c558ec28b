"""The convert flow's cache is never stale (issues 8 and 10): the real flow on the tiny teacher, a real
Prefect server, local artifact roots and a local MLflow SQLite file.

Which stages executed is read from MLflow: an executed stage opens its nested run under the flow's
parent run, a cached one does not (source and report open none: their Prefect states are read)."""

from __future__ import annotations

import shutil

import pytest

from flows.convert import convert_flow
from moe2dense_platform.result_storage import RESULTS_FOLDER
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import TAG_PREFECT_FLOW_RUN, TAG_STAGE, tracking_client
from tests.flows.test_convert_flow import STAGES, task_run_states


@pytest.fixture(scope="module")
def first_run(prefect_server, tiny_teacher, tmp_path_factory):
    """A fresh home with the local artifact root `store-a`, MLflow SQLite and the real Prefect server;
    the tiny recipe with its own copy of the calibration text, converted once."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    root = tmp_path_factory.mktemp("fresh_cache")
    (root / "home").mkdir()
    calibration_text = root / "calibration.txt"
    shutil.copy(tiny_teacher.text, calibration_text)
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "MOE2DENSE_S3_ENDPOINT_URL",
            "MOE2DENSE_MLFLOW_ARTIFACT_LOCATION",
            "MOE2DENSE_SETTINGS_FILE",
        ):
            patch.delenv(name, raising=False)
        patch.setenv("MOE2DENSE_HOME", str(root / "home"))
        patch.setenv("MOE2DENSE_ARTIFACT_ROOT", str(root / "store-a"))
        patch.setenv("MOE2DENSE_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'home' / 'mlflow.db'}")
        patch.setenv("MOE2DENSE_PREFECT_API_URL", prefect_server)
        with temporary_settings(
            updates={PREFECT_API_URL: prefect_server, PREFECT_LOCAL_STORAGE_PATH: str(root / "prefect-a")}
        ):
            recipe = tiny_teacher.recipe(
                f"calibration.data={{source: files, paths: [{calibration_text}], heldout_fraction: 0.2}}",
                "plan.scaling=proportional",  # scales follow the statistics, so new stats → new weights
            )
            yield root, recipe, convert_flow(recipe)


def executed_stages(parent_run_id: str) -> set[str]:
    client = tracking_client(Settings())
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    return {run.data.tags[TAG_STAGE] for run in children}


def prefect_states(parent_run_id: str, expected: set[str]) -> dict[str, str]:
    flow_run_id = tracking_client(Settings()).get_run(parent_run_id).data.tags[TAG_PREFECT_FLOW_RUN]
    return task_run_states(flow_run_id, expected=expected)


def test_an_unchanged_rerun_from_another_process_is_fully_cached(first_run):
    """Another process (its own PREFECT_HOME, so its own local result folder) sharing the store."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    root, recipe, first = first_run
    assert executed_stages(first.mlflow_run_id) == STAGES
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(root / "prefect-b")}):
        again = convert_flow(recipe)
    assert executed_stages(again.mlflow_run_id) == set()
    stages = {"source", "calibrate", "plan", "assemble", "evaluate", "distill", "report", "register"}
    states = prefect_states(again.mlflow_run_id, stages)
    assert set(states.values()) == {"Cached"}, states
    assert again == first.model_copy(update={"mlflow_run_id": again.mlflow_run_id})


def test_one_changed_byte_of_calibration_text_reruns_calibration_and_what_follows(first_run):
    root, recipe, first = first_run
    calibration_text = root / "calibration.txt"
    text = calibration_text.read_bytes()
    at = text.index(b"cat")
    calibration_text.write_bytes(text[:at] + b"cot" + text[at + 3 :])
    try:
        edited = convert_flow(recipe)
    finally:
        calibration_text.write_bytes(text)
    assert edited.calibration.data_digest != first.calibration.data_digest
    assert edited.assembled.checkpoint_digest != first.assembled.checkpoint_digest
    assert executed_stages(edited.mlflow_run_id) == STAGES - {"source", "evaluate-teacher"}
    states = prefect_states(edited.mlflow_run_id, {"source", "calibrate", "report"})
    assert (states["source"], states["calibrate"], states["report"]) == ("Cached", "Completed", "Completed")


def test_another_artifact_store_serves_nothing_from_the_first(first_run, monkeypatch):
    root, recipe, first = first_run
    store_b = root / "store-b"
    monkeypatch.setenv("MOE2DENSE_ARTIFACT_ROOT", str(store_b))
    second = convert_flow(recipe)
    # register ran, found the checkpoint already registered in this MLflow and opened no stage run
    assert executed_stages(second.mlflow_run_id) == STAGES - {"register"}
    states = prefect_states(second.mlflow_run_id, {"source", "report", "register"})
    assert set(states.values()) == {"Completed"}, states
    uris = [
        second.calibration.stats_uri,
        second.plan.plan_uri,
        second.assembled.checkpoint_uri,
        second.final.checkpoint_uri,
        second.report_uri,
        *[evaluation.eval_uri for evaluation in second.evaluations],
    ]
    assert all(uri.startswith(store_b.resolve().as_uri() + "/") for uri in uris), uris
    assert (store_b / RESULTS_FOLDER).is_dir()
    assert second.assembled.checkpoint_digest == first.assembled.checkpoint_digest  # same work, new store
