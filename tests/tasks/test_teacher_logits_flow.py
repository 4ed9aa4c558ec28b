"""One teacher cache, two students: two runs of a small flow (teacher_logits → distill in cached mode) on
the session's Prefect server, each with another student. The teacher pass runs once — the second flow
run gets the stage's result from Prefect's cache — and both distill runs read that one stored cache.
Embedded MLflow and artifact store in the stage tests' temporary home."""

from __future__ import annotations

import pytest
import torch
from prefect import flow

import tasks.teacher_logits as teacher_logits_module
from moe2dense_core.plan import PlanConfig
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.result_storage import ensure_result_storage
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_STAGE, parent_run
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.distill import distill_task
from tasks.plan import plan_task
from tasks.results import CheckpointResult, SourceResult, TeacherLogitsResult
from tasks.source import source_task
from tasks.teacher_logits import teacher_logits_task
from tests.fixtures.counting import Counted
from tests.tasks.stage_fixtures import parent_run_id, teacher  # noqa: F401 (fixtures)


@flow(name="distill-from-cache")
def distill_from_cache(
    recipe: Recipe, source: SourceResult, student: CheckpointResult
) -> tuple[TeacherLogitsResult, CheckpointResult]:
    ensure_result_storage()
    runtime = Runtime.from_environment()
    with parent_run(
        runtime.client,
        recipe,
        runtime.redactor,
        artifact_location=runtime.settings.resolved_mlflow_artifact_location,
    ) as parent:
        logits = teacher_logits_task(source, recipe.distillation, parent.run_id)
        return logits, distill_task(
            source, student, recipe.distillation, parent.run_id, teacher_logits=logits
        )


@pytest.fixture
def on_prefect(prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield


def test_two_students_share_one_teacher_pass(teacher, parent_run_id, on_prefect, monkeypatch):  # noqa: F811
    torch.set_num_threads(1)
    recipe = teacher.recipe("distillation.teacher=cached", "distillation.teacher_cache.k=16")
    source = source_task.fn(recipe.source)
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    students = [
        assemble_task.fn(
            source, plan_task.fn(source, calibration, plan, parent_run_id), recipe.storage, parent_run_id
        )
        for plan in (recipe.plan, PlanConfig(scoring={"name": "random", "seed": 3}))
    ]
    assert students[0].checkpoint_digest != students[1].checkpoint_digest
    passes = Counted(teacher_logits_module.teacher_pass)
    monkeypatch.setattr(teacher_logits_module, "teacher_pass", passes)

    (first_logits, first), (second_logits, second) = (distill_from_cache(recipe, source, s) for s in students)

    assert passes.calls == 1 and second_logits == first_logits
    client = Runtime.from_environment().client
    experiment = client.get_run(first.mlflow_run_id).info.experiment_id
    stage_runs = client.search_runs([experiment], f"tags.`{TAG_STAGE}` = 'teacher_logits'")
    assert [run.info.run_id for run in stage_runs] == [first_logits.mlflow_run_id]
    for distilled in (first, second):
        tags = client.get_run(distilled.mlflow_run_id).data.tags
        assert tags["moe2dense.input.teacher_logits.uri"] == first_logits.manifest_uri
    assert first.checkpoint_digest != second.checkpoint_digest
