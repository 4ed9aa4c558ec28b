"""Run under `torchrun --nproc_per_node 2` by test_distill_distributed_resume.py, with the test's folder:
for DDP and for FSDP (FSDP with activation checkpointing),
  - a straight 4-step run checkpointed every 2 steps into `two_<p>/`, whose step-4 checkpoint is then
    removed (the test resumes that 2-process step-2 checkpoint on 1 process);
  - a resume of `one_<p>/`, the step-2 checkpoint the test wrote with 1 process;
and FSDP's bf16 mixed precision on one forward (the dtype of the logits it computes). Rank 0 saves the
unsharded final weights of both runs and that dtype to `<folder>/two_processes.pt`.

Per process micro_batch_size = GLOBAL_ROWS_PER_MICRO_STEP / world size: every world size sees the same
global batch of 8 rows per step.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from moe2dense_core.distill import DistillConfig, distill
from moe2dense_core.distill.distributed import barrier, setup_distributed, wrap_student
from tests.core.distill_ddp_worker import full_state
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher

GLOBAL_ROWS_PER_MICRO_STEP = 4
PARALLELISMS = ("ddp", "fsdp")


def config(parallelism: str, world_size: int) -> DistillConfig:
    return DistillConfig(
        max_steps=4,
        micro_batch_size=GLOBAL_ROWS_PER_MICRO_STEP // world_size,
        grad_accum_steps=2,
        lr=2e-3,
        ce_weight=0.3,
        precision="fp32",
        seed=5,
        checkpoint_every=2,
        parallelism=parallelism,
    )


def inputs() -> tuple[torch.nn.Module, torch.Tensor]:
    """The teacher and the 16 training rows of length 12 (2 epochs in 4 steps)."""
    return tiny_teacher(seed=11), random_rows(16, 12, seed=12)


def bf16_logits_dtype(ctx) -> torch.dtype:
    """The logits dtype of one forward of a student sharded with FSDP's bf16 policy."""
    teacher, data = inputs()
    model = wrap_student(dense_student_from_teacher(teacher), ctx, "fsdp", precision="bf16")
    with torch.no_grad():
        return model(input_ids=data[:2], use_cache=False).logits.dtype


def main(folder: Path) -> None:
    ctx = setup_distributed(torch.device("cpu"))
    results: dict[str, object] = {"bf16_logits_dtype": str(bf16_logits_dtype(ctx))}
    for parallelism in PARALLELISMS:
        teacher, data = inputs()
        two = config(parallelism, ctx.world_size)
        if parallelism == "fsdp":
            two = two.model_copy(update={"gradient_checkpointing": True})
        straight = dense_student_from_teacher(teacher)
        distill(straight, teacher, data, two, checkpoint_dir=folder / f"two_{parallelism}")
        barrier(ctx)
        if ctx.is_main:
            shutil.rmtree(folder / f"two_{parallelism}" / "step_00000004")
        resumed = dense_student_from_teacher(
            tiny_teacher(seed=99)
        )  # wrong weights until the checkpoint loads
        outcome = distill(
            resumed, teacher, data, two, checkpoint_dir=folder / f"one_{parallelism}", resume=True
        )
        results[parallelism] = {
            "straight": full_state(straight),
            "resumed_from_one": full_state(resumed),
            "start_step": outcome.start_step,
        }
    if ctx.is_main:
        torch.save(results, folder / "two_processes.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes share the CPU cores
    main(Path(sys.argv[1]))
