"""Issue 9 item 5 / issue 10 item 5: every artifact is stored ONCE (content-addressed in the artifact
store); MLflow records its URI and the store's content address; the registered model version points at
the stored checkpoint (no upload) and still serves it to a stock `from_pretrained`. Embedded default
(local store, MLflow SQLite + file artifacts, all under one home), stage tasks through `.fn`."""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_CHECKPOINT_SHA256,
    TAG_PLAN_DIGEST,
    TAG_STATS_DIGEST,
)
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.plan import plan_task
from tasks.report import register_task
from tasks.source import source_task
from tests.tasks.stage_fixtures import parent_run_id, teacher  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def registered(teacher, parent_run_id):  # noqa: F811
    torch.set_num_threads(1)
    recipe = teacher.recipe()
    source = source_task.fn(recipe.source, parent_run_id)
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    plan = plan_task.fn(source, calibration, recipe.plan, parent_run_id)
    assembled = assemble_task.fn(source, plan, recipe.storage, parent_run_id)
    registration = register_task.fn(source, plan, assembled, "one-copy-dense", None, parent_run_id)
    return source, calibration, plan, assembled, registration


def copies_under(root, sha256: str) -> int:
    """How many files under `root` hold exactly the bytes whose sha256 is `sha256`."""
    return sum(
        1
        for path in root.rglob("*")
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    )


def test_every_checkpoint_and_stats_file_exists_once_in_the_home(registered):
    """The home holds the artifact store AND MLflow's artifact folder: one copy in all of it."""
    _, calibration, _, assembled, _ = registered
    runtime = Runtime.from_environment()
    for uri in (assembled.checkpoint_uri, calibration.stats_uri):
        manifest = runtime.store.manifest(runtime.store.ref_from_uri(uri))
        for entry in manifest.files:
            assert copies_under(runtime.settings.home, entry.sha256) == 1, (uri, entry.path)


def test_the_registered_version_points_at_the_stored_checkpoint_and_loads(registered):
    _, _, plan, assembled, registration = registered
    runtime = Runtime.from_environment()
    version = runtime.client.get_model_version(registration.model_name, registration.version)
    assert version.source == assembled.checkpoint_uri
    ref = runtime.store.ref_from_uri(version.source)
    assert version.tags[TAG_CHECKPOINT_SHA256] == ref.sha256
    assert version.tags[TAG_CHECKPOINT_DIGEST] == assembled.checkpoint_digest
    assert version.tags[TAG_PLAN_DIGEST] == plan.plan_digest
    model = AutoModelForCausalLM.from_pretrained(runtime.fetch_uri(version.source))
    assert model.config.intermediate_size == plan.target_width


def test_stage_runs_record_the_store_content_addresses(registered):
    source, calibration, plan, assembled, _ = registered
    runtime = Runtime.from_environment()
    client, store = runtime.client, runtime.store
    calibrate_run = client.get_run(calibration.mlflow_run_id).data.tags
    assert calibrate_run["moe2dense.output.stats.sha256"] == store.ref_from_uri(calibration.stats_uri).sha256
    assert calibrate_run[TAG_STATS_DIGEST] == calibration.stats_digest
    plan_run = client.get_run(plan.mlflow_run_id).data.tags
    assert plan_run["moe2dense.input.stats.sha256"] == calibrate_run["moe2dense.output.stats.sha256"]
    assemble_run = client.get_run(assembled.mlflow_run_id).data.tags
    assert assemble_run["moe2dense.input.plan.sha256"] == plan_run["moe2dense.output.plan.sha256"]
    assert assemble_run["moe2dense.output.dense-model.uri"] == assembled.checkpoint_uri
    assert (
        client.get_run(source.mlflow_run_id).data.tags["moe2dense.snapshot_digest"] == source.snapshot_digest
    )
    assert not client.list_artifacts(assembled.mlflow_run_id)  # no checkpoint copy in MLflow
