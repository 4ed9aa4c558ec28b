"""The loop's contract: metrics at steps, schedule, precision, gradient checkpointing, every loss,
and the refusals that happen before any forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from moe2dense_core.distill import DistillConfig, DistillError, bf16_supported, distill, resolve_precision
from moe2dense_core.distill.schedule import WarmupCosine
from tests.core.distill_tiny_models import (
    dense_student_from_teacher,
    peaked_teacher,
    random_rows,
    tiny_teacher,
)

CPU = torch.device("cpu")


class RecordingLogger:
    def __init__(self) -> None:
        self.params: dict = {}
        self.steps: list[int] = []
        self.metrics: list[dict[str, float]] = []

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.steps.append(step)
        self.metrics.append(metrics)

    def log_artifact(self, path, artifact_path=None) -> None:
        return None


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return tiny_teacher(seed=2)


def test_metrics_are_logged_at_steps_and_the_loss_falls(teacher) -> None:
    logger = RecordingLogger()
    data = random_rows(8, 16, seed=1)
    config = DistillConfig(
        max_steps=8, micro_batch_size=4, lr=5e-3, warmup_steps=2, log_every=3, ce_weight=0.05
    )
    result = distill(dense_student_from_teacher(teacher, [5, 6]), teacher, data, config, logger=logger)
    assert logger.steps == [3, 6, 8]
    assert set(logger.metrics[0]) == {"loss", "kl", "ce", "lr", "grad_norm", "tokens_per_s"}
    assert logger.params["distill.loss"] == "forward_kl" and logger.params["distill.resolved_precision"] in (
        "bf16",
        "fp32",
    )
    assert logger.metrics[-1]["loss"] < logger.metrics[0]["loss"]
    assert all(m["tokens_per_s"] > 0 and math.isfinite(m["grad_norm"]) for m in logger.metrics)
    assert result.final_metrics == logger.metrics[-1] and result.tokens_seen == 8 * 4 * 16


def test_warmup_cosine_multiplier() -> None:
    schedule = WarmupCosine(warmup_steps=4, total_steps=12, min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(8) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(12) == pytest.approx(0.1) and schedule(20) == pytest.approx(0.1)


@pytest.mark.parametrize("loss", ["reverse_kl", "jsd"])
def test_alternative_losses_train_the_student_towards_the_teacher(loss: str) -> None:
    teacher = peaked_teacher(seed=2)
    data = random_rows(4, 16, seed=3)
    config = DistillConfig(max_steps=6, micro_batch_size=4, lr=1e-4, loss=loss, precision="fp32")
    result = distill(dense_student_from_teacher(teacher, [5, 6]), teacher, data, config)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.history[-1]["kl"] < result.history[0]["kl"]


def test_gradient_checkpointing_gives_the_same_training(teacher) -> None:
    data = random_rows(4, 16, seed=4)
    config = DistillConfig(max_steps=2, micro_batch_size=2, grad_accum_steps=2, lr=1e-3, precision="fp32")
    plain, checkpointed = dense_student_from_teacher(teacher), dense_student_from_teacher(teacher)
    distill(plain, teacher, data, config)
    distill(checkpointed, teacher, data, config.model_copy(update={"gradient_checkpointing": True}))
    assert checkpointed.is_activation_checkpointing
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_bf16_autocast_keeps_fp32_master_weights(teacher) -> None:
    precision = resolve_precision("auto", CPU)
    assert precision == ("bf16" if bf16_supported(CPU) else "fp32")
    student = dense_student_from_teacher(teacher)
    result = distill(
        student, teacher, random_rows(4, 8, seed=5), DistillConfig(max_steps=1, micro_batch_size=4)
    )
    assert result.precision == precision
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_bad_requests_are_refused_before_training(teacher) -> None:
    student = dense_student_from_teacher(teacher)
    config = DistillConfig(max_steps=1, micro_batch_size=4)
    with pytest.raises(DistillError, match="fewer than one global batch of 4"):
        distill(student, teacher, random_rows(3, 8), config)
    with pytest.raises(DistillError, match=r"token ids must lie in \[0, 256\)"):
        distill(student, teacher, random_rows(4, 8) + 300, config)
    with pytest.raises(DistillError, match="int tensor"):
        distill(student, teacher, random_rows(4, 8).float(), config)
    with pytest.raises(DistillError, match="student vocab_size 256 != teacher vocab_size 300"):
        distill(student, tiny_teacher(vocab_size=300), random_rows(4, 8), config)
    with pytest.raises(DistillError, match="checkpoint_dir"):
        distill(student, teacher, random_rows(4, 8), config.model_copy(update={"checkpoint_every": 1}))


def test_config_is_strict_and_frozen() -> None:
    with pytest.raises(ValidationError, match="warmup_steps"):
        DistillConfig(max_steps=2, warmup_steps=3)
    with pytest.raises(ValidationError, match="extra"):
        DistillConfig(max_steps=2, learning_rate=1.0)
    config = DistillConfig(max_steps=2)
    with pytest.raises(ValidationError):
        config.lr = 1.0  # type: ignore[misc]
    assert config.sequences_per_step(world_size=4) == 8 * 1 * 4
