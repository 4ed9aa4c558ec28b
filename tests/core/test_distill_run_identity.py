"""A checkpoint resumes only the run that wrote it: other config, data or student is refused with the
differing fields named, before anything is loaded; resume="extend" continues a finished run to a new
max_steps with the lr schedule rebuilt for the new total."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import DistillConfig, DistillError, distill
from moe2dense_core.distill.schedule import WarmupCosine
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher

CONFIG = DistillConfig(
    max_steps=4,
    micro_batch_size=4,
    lr=2e-3,
    warmup_steps=1,
    min_lr_ratio=0.1,
    precision="fp32",
    checkpoint_every=2,
    seed=3,
)


class LrLogger:
    def __init__(self) -> None:
        self.lr: dict[int, float] = {}
        self.params: dict = {}

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.lr[int(step)] = metrics["lr"]

    def log_artifact(self, path, artifact_path=None) -> None:
        return None


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished 4-step run (checkpoints at steps 2 and 4) of student "student-a"."""
    teacher = tiny_teacher(seed=1)
    data = random_rows(8, 16, seed=2)
    folder = tmp_path_factory.mktemp("finished")
    distill(
        dense_student_from_teacher(teacher),
        teacher,
        data,
        CONFIG,
        checkpoint_dir=folder,
        student_digest="student-a",
    )
    return {"teacher": teacher, "data": data, "folder": folder}


@pytest.fixture
def run_dir(finished: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished["folder"], tmp_path / "run"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_run_is_refused_naming_every_difference(finished: dict, run_dir: Path) -> None:
    teacher, data = finished["teacher"], finished["data"]
    before = _files(run_dir)
    student = dense_student_from_teacher(teacher)
    weights = {k: v.clone() for k, v in student.state_dict().items()}
    other = CONFIG.model_copy(update={"lr": 1e-3})
    with pytest.raises(DistillError) as refused:
        distill(
            student,
            teacher,
            random_rows(8, 16, seed=9),
            other,
            checkpoint_dir=run_dir,
            resume=True,
            student_digest="student-b",
        )
    message = str(refused.value)
    assert "step_00000004" in message
    for named in ("config.lr: checkpoint 0.002, now 0.001", "data_digest", "'student-a', now 'student-b'"):
        assert named in message
    assert "config.max_steps" not in message and "config.seed" not in message
    with pytest.raises(DistillError, match=r"config\.max_steps: checkpoint 4, now 6.*resume='extend'"):
        distill(
            student,
            teacher,
            data,
            CONFIG.model_copy(update={"max_steps": 6}),
            checkpoint_dir=run_dir,
            resume=True,
            student_digest="student-a",
        )
    with pytest.raises(DistillError, match="already holds checkpoints"):
        distill(student, teacher, data, CONFIG, checkpoint_dir=run_dir, student_digest="student-a")
    assert _files(run_dir) == before  # refused before anything was loaded or written
    assert all(torch.equal(v, weights[k]) for k, v in student.state_dict().items())

    # execution-only fields do not make another run
    same = CONFIG.model_copy(update={"log_every": 3, "keep_checkpoints": 5, "gradient_checkpointing": True})
    result = distill(
        student, teacher, data, same, checkpoint_dir=run_dir, resume=True, student_digest="student-a"
    )
    assert (result.start_step, result.steps) == (4, 4)

    (run_dir / "step_00000004" / "run.json").unlink()  # as a checkpoint that never recorded its run
    with pytest.raises(DistillError, match=r"step_00000004 lacks run\.json"):
        distill(
            student, teacher, data, CONFIG, checkpoint_dir=run_dir, resume=True, student_digest="student-a"
        )


def test_extend_continues_a_finished_run_on_a_schedule_for_the_new_total(
    finished: dict, run_dir: Path
) -> None:
    teacher, data = finished["teacher"], finished["data"]
    longer = CONFIG.model_copy(update={"max_steps": 8})
    log = LrLogger()
    result = distill(
        dense_student_from_teacher(teacher),
        teacher,
        data,
        longer,
        checkpoint_dir=run_dir,
        resume="extend",
        student_digest="student-a",
        logger=log,
    )
    assert (result.start_step, result.steps) == (4, 8) and log.params["distill.start_step"] == 4
    schedule = WarmupCosine(warmup_steps=1, total_steps=8, min_ratio=0.1)
    assert log.lr == pytest.approx({s: 2e-3 * schedule(s - 1) for s in range(5, 9)}, rel=1e-12)
    assert log.lr[5] > 2e-3 * 0.5  # the 4-step schedule would sit at its floor 2e-4 from here on

    # the extended run is now the run of record: a plain resume at the new total accepts it
    again = distill(
        dense_student_from_teacher(teacher),
        teacher,
        data,
        longer,
        checkpoint_dir=run_dir,
        resume=True,
        student_digest="student-a",
    )
    assert (again.start_step, again.steps) == (8, 8)
    with pytest.raises(DistillError, match="at step 8, past the requested max_steps=6"):
        distill(
            dense_student_from_teacher(teacher),
            teacher,
            data,
            CONFIG.model_copy(update={"max_steps": 6}),
            checkpoint_dir=run_dir,
            resume="extend",
            student_digest="student-a",
        )
