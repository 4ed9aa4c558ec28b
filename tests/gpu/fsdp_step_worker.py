"""Under `torchrun --nproc_per_node N` on N GPUs: a 4-step FSDP distillation of a tiny dense student from a
tiny MoE teacher in the given precision; rank 0 saves the final loss and the student's logits dtype."""

from __future__ import annotations

import sys

import torch

from moe2dense_core.distill import DistillConfig, distill
from moe2dense_core.distill.precision import autocast
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher


def main(precision: str, out: str) -> None:
    teacher = tiny_teacher(seed=11)
    student = dense_student_from_teacher(teacher).cuda()
    config = DistillConfig(
        max_steps=4,
        micro_batch_size=2,
        lr=2e-3,
        precision=precision,
        seed=5,
        parallelism="fsdp",
        gradient_checkpointing=True,
    )
    result = distill(student, teacher, random_rows(32, 16, seed=12), config)
    if torch.distributed.get_rank() == 0:
        with torch.no_grad(), autocast(precision, torch.device("cuda")):
            logits = student(input_ids=random_rows(1, 8, seed=1).cuda()).logits
        torch.save(
            {"final_loss": float(result.final_metrics["loss"]), "logits_dtype": str(logits.dtype)}, out
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
