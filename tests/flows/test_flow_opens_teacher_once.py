"""flows/convert.py against real Prefect, MLflow and S3 servers: one whole flow run opens the teacher only
through the one entry (open_teacher) and validates it exactly once — in the `source` stage; calibrate,
plan and assemble re-open it across their task boundaries with the digests the source stage recorded."""

from __future__ import annotations

import shutil

import pytest

import moe2dense_core.checkpoint.teacher as teacher_module
import tasks.source as source_module
from flows.convert import convert_flow
from tests.fixtures.counting import Counted

pytestmark = pytest.mark.integration


def test_a_flow_run_validates_the_teacher_once(team_stack, tiny_teacher, monkeypatch, tmp_path):
    """A private copy of the teacher and its own calibration seed: no stage is served from another test's
    cache; weight_cluster makes the plan stage read expert weights."""
    teacher_copy = shutil.copytree(tiny_teacher.path, tmp_path / "teacher")
    recipe = tiny_teacher.recipe(
        f"source.model={teacher_copy}",
        "name=opened-once",
        "calibration.seed=17",
        "plan.grouping=weight_cluster",
        "plan.num_selected=4",
        "plan.num_groups=2",
        "distillation.enabled=false",
    )
    opens = Counted(source_module.open_teacher)
    validations = Counted(teacher_module.validate_checkpoint)
    monkeypatch.setattr(source_module, "open_teacher", opens)
    monkeypatch.setattr(teacher_module, "validate_checkpoint", validations)
    result = convert_flow(recipe)
    assert result.assembled.num_parameters > 0
    assert (opens.calls, validations.calls) == (
        4,
        1,
    )  # source, calibrate, plan, assemble; validated in source
