"""Two `convert` runs and a `sweep` at once against one Prefect server, one MLflow server and one bucket:
no artifact clobbered (every stored artifact verifies against its manifest), every lineage chain
complete (each parent run links a FINISHED run for each of its stages), and the calibration all three
share stored once (one statistics artifact, one cache entry, one digest, computed at most once per run).

Each flow runs in its own child process (as two users or two workers would) on the tiny random-init
teacher, without distillation, with the artifact root `s3://<bucket>/<fresh prefix>` on the moto server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from moe2dense_platform.artifact_manifest import MANIFEST_SUFFIX, ArtifactRef
from moe2dense_platform.local_stack import isolated_environment
from moe2dense_platform.result_storage import RESULTS_FOLDER
from tests.integration.test_upload_sigkill import PROJECT_ROOT, keys, s3_store

pytestmark = pytest.mark.slow

CONVERT_STAGES = {
    "source",
    "calibrate",
    "plan",
    "assemble",
    "evaluate-teacher",
    "evaluate-assembled",
    "report",
}
SWEEP_SCORERS = ("sf", "random")
SWEEP_GROUPING = (
    "output_cluster"  # reads the Gram, as the converts' do_acp does: all three need one calibration
)


def run_flow(flow: str, teacher: str, text: str, out: str, *overrides: str) -> None:
    """Child process: the `convert` or `sweep` flow on the tiny teacher; writes its result's JSON to `out`."""
    from tests.flows.tiny_teacher import TinyTeacher

    recipe = TinyTeacher(Path(teacher), Path(text)).recipe(
        "distillation.enabled=false", "tracking.registered_model=null", *overrides
    )
    if flow == "convert":
        from flows.convert import convert_flow

        result = convert_flow(recipe)
    else:
        from flows.sweep import SweepGrid, SweepRecipe, sweep_flow

        grid = SweepGrid(scorers=SWEEP_SCORERS, num_selected=(None,), groupings=(SWEEP_GROUPING,))
        result = sweep_flow(SweepRecipe(recipe=recipe, grid=grid, distill_best=0))
    Path(out).write_text(result.model_dump_json())


def test_two_converts_and_a_sweep_at_once_share_one_calibration_and_clobber_nothing(
    s3_server, mlflow_server, prefect_server, random_teacher, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from moe2dense_platform.tracking import TAG_OUTPUT, TAG_STAGE, stage_runs

    teacher, text = random_teacher
    prefix = f"concurrent-{uuid.uuid4().hex[:8]}"
    runs = {
        "convert-a": ("convert", "name=concurrent-a"),
        "convert-b": ("convert", "name=concurrent-b", "plan.scaling=proportional"),
        "sweep": ("sweep", "name=concurrent-sweep"),
    }
    children = {}
    for label, (flow, *overrides) in runs.items():
        env = isolated_environment(
            MOE2DENSE_HOME=str(tmp_path / label),
            MOE2DENSE_ARTIFACT_ROOT=f"s3://{s3_server.bucket}/{prefix}",
            MOE2DENSE_S3_ENDPOINT_URL=s3_server.endpoint_url,
            MOE2DENSE_AWS_ACCESS_KEY_ID=s3_server.access_key_id,
            MOE2DENSE_AWS_SECRET_ACCESS_KEY=s3_server.secret_access_key,
            MOE2DENSE_MLFLOW_TRACKING_URI=mlflow_server.tracking_uri,
            MOE2DENSE_PREFECT_API_URL=prefect_server,
            PREFECT_API_URL=prefect_server,
            PREFECT_HOME=str(tmp_path / label / "prefect"),
        )
        code = (
            "import sys; from tests.integration.test_concurrent_runs import run_flow; run_flow(*sys.argv[1:])"
        )
        argv = [
            sys.executable,
            "-c",
            code,
            flow,
            str(teacher),
            str(text),
            str(tmp_path / f"{label}.json"),
            *overrides,
        ]
        children[label] = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    for label, child in children.items():
        _, stderr = child.communicate(timeout=900)
        assert child.returncode == 0, f"{label}: {stderr[-4000:]}"
    results = {label: json.loads((tmp_path / f"{label}.json").read_text()) for label in runs}
    a, b, sweep = results["convert-a"], results["convert-b"], results["sweep"]

    # one calibration, shared: one digest, one stored copy, one cache entry
    assert a["calibration"]["stats_uri"] == b["calibration"]["stats_uri"]
    assert {a["calibration"]["stats_digest"], b["calibration"]["stats_digest"], sweep["stats_digest"]} == {
        a["calibration"]["stats_digest"]
    }
    stored = keys(s3_server, prefix)
    manifests = [key for key in stored if key.endswith(MANIFEST_SUFFIX)]
    assert len([key for key in manifests if key.startswith(f"{prefix}/stats/")]) == 1
    assert (
        len([key for key in stored if key.startswith(f"{prefix}/{RESULTS_FOLDER}/moe2dense-calibrate-")]) == 1
    )

    # nothing clobbered: every artifact's every file matches its manifest
    store = s3_store(s3_server.endpoint_url, s3_server.bucket, prefix, str(tmp_path / "cache"))
    for i, key in enumerate(manifests):
        store.get(
            ArtifactRef.from_key(key[len(prefix) + 1 : -len(MANIFEST_SUFFIX)]), tmp_path / "verify" / str(i)
        )
    checkpoints = {
        a["assembled"]["checkpoint_uri"],
        b["assembled"]["checkpoint_uri"],
        *(entry["checkpoint_uri"] for entry in sweep["entries"]),
    }
    assert {store.uri_for(store.ref_from_uri(uri)) for uri in checkpoints} == checkpoints
    assert len([k for k in manifests if k.startswith(f"{prefix}/dense-model/")]) == len(checkpoints)

    # every lineage chain complete
    client = MlflowClient(mlflow_server.tracking_uri)
    calibrations = 0
    for result in (a, b):
        stages = stage_runs(client, result["mlflow_run_id"])
        assert set(stages) >= CONVERT_STAGES, sorted(stages)
        assert {stages[s].info.status for s in CONVERT_STAGES} == {"FINISHED"}
        dense = stages["assemble"].data.tags[f"{TAG_OUTPUT}.dense-model.uri"]
        assert dense == result["assembled"]["checkpoint_uri"]
        calibrations += stages["calibrate"].data.tags.get("mlflow.parentRunId") == result["mlflow_run_id"]
    sweep_parent = client.get_run(sweep["mlflow_run_id"])
    sweep_children = client.search_runs(
        [sweep_parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep['mlflow_run_id']}'"
    )
    assert {run.info.status for run in sweep_children} == {"FINISHED"}
    sweep_stages = [run.data.tags[TAG_STAGE] for run in sweep_children]
    calibrations += sweep_stages.count("calibrate")
    assert 1 <= calibrations <= 3  # computed once, or concurrently more than once with one identical result
    assert len(sweep["entries"]) == len(SWEEP_SCORERS)
