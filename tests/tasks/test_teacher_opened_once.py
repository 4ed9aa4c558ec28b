"""The convert flow's teacher stages open the teacher through the one entry (open_teacher) and validate it
once: `source` validates and hashes it; calibrate, plan (weight_cluster reads expert weights) and assemble
re-open it across their Prefect task boundaries with the recorded digests, which — the files untouched
since this process hashed them — prove it is the validated snapshot. A byte changed after the source
stage is refused by the next stage, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import moe2dense_core.checkpoint.teacher as teacher_module
import tasks.source as source_module
from moe2dense_core.errors import CheckpointError
from moe2dense_core.plan import PlanConfig
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.plan import plan_task
from tasks.source import source_task
from tests.fixtures.counting import Counted
from tests.flows.tiny_teacher import TinyTeacher, make_random_teacher
from tests.tasks.stage_fixtures import parent_run_id  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TinyTeacher:
    """A tiny random Qwen3-MoE (8 experts, top-2, byte-level tokenizer) and English text to calibrate on."""
    return make_random_teacher(tmp_path_factory.mktemp("teacher"), 400)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counted]:
    """Calls of the one entry (as the stage tasks call it) and of checkpoint validation."""
    calls = {
        "open_teacher": Counted(source_module.open_teacher),
        "validate_checkpoint": Counted(teacher_module.validate_checkpoint),
    }
    monkeypatch.setattr(source_module, "open_teacher", calls["open_teacher"])
    monkeypatch.setattr(teacher_module, "validate_checkpoint", calls["validate_checkpoint"])
    return calls


def test_the_stages_open_the_teacher_through_one_entry_and_validate_it_once(
    teacher: TinyTeacher,
    parent_run_id,  # noqa: F811
    counted: dict[str, Counted],
) -> None:
    recipe = teacher.recipe()
    source = source_task.fn(recipe.source)
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    weight_cluster = PlanConfig(scoring="acp", num_selected=4, num_groups=2, grouping="weight_cluster")
    plan = plan_task.fn(source, calibration, weight_cluster, parent_run_id)
    assemble_task.fn(source, plan, recipe.storage, parent_run_id)
    assert counted["open_teacher"].calls == 4  # source, calibrate, plan (expert weights), assemble
    assert counted["validate_checkpoint"].calls == 1


def test_a_byte_changed_after_the_source_stage_is_refused_by_the_next(
    teacher: TinyTeacher,
    parent_run_id,  # noqa: F811
    tmp_path: Path,
) -> None:
    copy = Path(shutil.copytree(teacher.path, tmp_path / "teacher"))
    recipe = teacher.recipe(f"source.model={copy}")
    source = source_task.fn(recipe.source)
    shard = sorted(name for name in source.file_digests if name.endswith(".safetensors"))[0]
    data = bytearray((copy / shard).read_bytes())
    data[-1] ^= 0x01  # a tensor byte: every header still parses
    (copy / shard).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard}: sha256 [0-9a-f]+ does not match the recorded"):
        calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    assert json.loads((copy / "config.json").read_text())["model_type"] == source.model_type
