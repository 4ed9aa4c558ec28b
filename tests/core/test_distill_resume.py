"""Exact resume: a run interrupted after its step-3 checkpoint and resumed ends bit-identical to an
uninterrupted run (weights, optimizer moments, lr, logged losses), across an epoch boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import DistillConfig, DistillError, distill, latest_checkpoint
from moe2dense_core.distill.checkpointing import TrainerPosition, load_checkpoint
from moe2dense_core.distill.distributed import setup_distributed
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher

CPU = torch.device("cpu")
CONFIG = DistillConfig(
    max_steps=6,
    micro_batch_size=2,
    grad_accum_steps=2,
    lr=3e-3,
    warmup_steps=2,
    ce_weight=0.2,
    checkpoint_every=3,
    keep_checkpoints=2,
    seed=7,
)


class RecordingLogger:
    def __init__(self, crash_at_step: int | None = None) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.crash_at_step = crash_at_step

    def log_params(self, params: dict) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step == self.crash_at_step:
            raise KeyboardInterrupt(f"simulated interruption at step {step}")
        self.metrics[int(step)] = metrics

    def log_artifact(self, path, artifact_path=None) -> None:
        return None


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    teacher = tiny_teacher(seed=1)
    data = random_rows(12, 16, seed=2)  # 4 rows per step: 3 steps per epoch, so 6 steps cross an epoch

    straight = dense_student_from_teacher(teacher)
    straight_log = RecordingLogger()
    full = distill(straight, teacher, data, CONFIG, logger=straight_log, checkpoint_dir=tmp_path / "a")
    assert full.steps == 6 and full.checkpoint_path == tmp_path / "a" / "step_00000006"

    interrupted = dense_student_from_teacher(teacher)
    with pytest.raises(KeyboardInterrupt):
        distill(
            interrupted,
            teacher,
            data,
            CONFIG,
            logger=RecordingLogger(crash_at_step=5),
            checkpoint_dir=tmp_path / "b",
        )
    assert latest_checkpoint(tmp_path / "b").name == "step_00000003"

    resumed = dense_student_from_teacher(teacher)  # fresh weights: everything must come from the checkpoint
    resumed_log = RecordingLogger()
    result = distill(
        resumed, teacher, data, CONFIG, logger=resumed_log, checkpoint_dir=tmp_path / "b", resume=True
    )

    assert result.start_step == 3 and full.start_step == 0
    assert result.steps == 6 and result.tokens_seen == full.tokens_seen == 6 * 4 * 16
    assert sorted(resumed_log.metrics) == [4, 5, 6]
    for step in (4, 5, 6):
        for name in ("loss", "kl", "ce", "lr", "grad_norm"):
            assert resumed_log.metrics[step][name] == straight_log.metrics[step][name], (step, name)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    final_a, optimizer_a = _restored(tmp_path / "a" / "step_00000006", teacher)
    final_b, optimizer_b = _restored(tmp_path / "b" / "step_00000006", teacher)
    for param_a, param_b in zip(
        optimizer_a.param_groups[0]["params"], optimizer_b.param_groups[0]["params"], strict=True
    ):
        assert torch.equal(optimizer_a.state[param_a]["exp_avg_sq"], optimizer_b.state[param_b]["exp_avg_sq"])
    assert final_a.step == final_b.step == 6


def _restored(checkpoint: Path, teacher: torch.nn.Module) -> tuple[TrainerPosition, torch.optim.Optimizer]:
    """The position and optimizer state a checkpoint restores into a fresh student and AdamW."""
    student = dense_student_from_teacher(teacher)
    optimizer = torch.optim.AdamW(student.parameters())
    position = load_checkpoint(checkpoint, model=student, optimizer=optimizer, ctx=setup_distributed(CPU))
    return position, optimizer


def test_resume_refuses_without_a_directory_and_starts_fresh_in_an_empty_one(tmp_path: Path) -> None:
    teacher = tiny_teacher(seed=1)
    data = random_rows(4, 8, seed=2)
    config = DistillConfig(max_steps=1, micro_batch_size=4)
    with pytest.raises(DistillError, match="checkpoint_dir"):
        distill(dense_student_from_teacher(teacher), teacher, data, config, resume=True)
    result = distill(
        dense_student_from_teacher(teacher), teacher, data, config, checkpoint_dir=tmp_path, resume=True
    )
    assert result.steps == 1 and (tmp_path / "step_00000001" / "trainer.json").is_file()


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_one_model_resumes_twice_and_keeps_no_gradients(tmp_path: Path, gradient_checkpointing: bool) -> None:
    """Gradients left on the parameters made torch skip initialising the next optimizer's state, so the
    second resume on the same model object failed inside torch's state-dict loading."""
    teacher = tiny_teacher(seed=1)
    data = random_rows(8, 16, seed=2)
    config = DistillConfig(
        max_steps=2,
        micro_batch_size=4,
        precision="fp32",
        checkpoint_every=1,
        gradient_checkpointing=gradient_checkpointing,
    )
    student = dense_student_from_teacher(teacher)
    runs = [distill(student, teacher, data, config, checkpoint_dir=tmp_path, resume=True)]
    assert all(p.grad is None for p in student.parameters())
    for steps in (3, 4):
        runs.append(
            distill(
                student,
                teacher,
                data,
                config.model_copy(update={"max_steps": steps}),
                checkpoint_dir=tmp_path,
                resume="extend",
            )
        )
        assert all(p.grad is None for p in student.parameters())
    assert [(r.start_step, r.steps) for r in runs] == [(0, 2), (2, 3), (3, 4)]
