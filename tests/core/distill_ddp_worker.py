"""Run under `torchrun --nproc_per_node N` (or call `main` in one plain process): for DDP and for FSDP,
one step's gradients through `accumulate_gradients`, a short checkpointed `distill` run, and a resume
of that run from its step-2 checkpoint; rank 0 saves all results to the given path.

Micro-batch size is 4 / N, so every world size sees the same global batch of 4 rows per micro-step.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from moe2dense_core.distill import DistillConfig, distill
from moe2dense_core.distill.checkpointing import full_training_state
from moe2dense_core.distill.distributed import all_reduce_sum, barrier, setup_distributed, wrap_student
from moe2dense_core.distill.loop import accumulate_gradients
from moe2dense_core.distill.sampling import step_micro_batches
from moe2dense_core.distill.targets import OnlineTeacher
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher

GLOBAL_MICRO_BATCH = 4


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor shard (FSDP) gathered to the full tensor; plain tensors unchanged."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def run(parallelism: str, checkpoint_dir: Path) -> dict:
    ctx = setup_distributed(torch.device("cpu"))
    teacher = tiny_teacher(seed=11)
    data = random_rows(16, 12, seed=12)
    config = DistillConfig(
        max_steps=3,
        micro_batch_size=GLOBAL_MICRO_BATCH // ctx.world_size,
        grad_accum_steps=2,
        lr=2e-3,
        ce_weight=0.3,
        precision="fp32",
        seed=5,
        parallelism=parallelism,
        checkpoint_every=2,
    )

    student = dense_student_from_teacher(teacher)
    model = wrap_student(student, ctx, parallelism)
    source = OnlineTeacher(teacher, precision="fp32", device=ctx.device, top_k=None)
    micro_rows = step_micro_batches(
        0,
        num_rows=len(data),
        micro_batch=config.micro_batch_size,
        accumulation=config.grad_accum_steps,
        world_size=ctx.world_size,
        rank=ctx.rank,
        seed=config.seed,
        shuffle=config.shuffle,
    )
    sums = accumulate_gradients(model, source, data, micro_rows, config, precision="fp32", ctx=ctx)
    total = all_reduce_sum(sums, ctx)
    grads = {name: _full(p.grad).detach().clone() for name, p in student.named_parameters()}

    trained = dense_student_from_teacher(teacher)
    result = distill(trained, teacher, data, config, checkpoint_dir=checkpoint_dir)
    state = full_state(trained)
    barrier(ctx)
    if ctx.rank == 0:
        shutil.rmtree(checkpoint_dir / "step_00000003")  # as if the run had stopped after step 2
    barrier(ctx)
    resumed = dense_student_from_teacher(tiny_teacher(seed=99))  # wrong weights until the checkpoint loads
    distill(resumed, teacher, data, config, checkpoint_dir=checkpoint_dir, resume=True)
    return {
        "world_size": ctx.world_size,
        "loss": float(total[0]),
        "grads": grads,
        "history": result.history,
        "state": state,
        "resumed_state": full_state(resumed),
        "sharded": any(hasattr(p, "full_tensor") for p in trained.parameters()),
    }


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights by name (collective under FSDP; rank 0 holds them with several processes)."""
    state, _ = full_training_state(model, torch.optim.AdamW(model.parameters()))
    return state


def main(out_path: Path) -> None:
    results = {p: run(p, out_path.parent / f"{out_path.stem}_{p}_checkpoints") for p in ("ddp", "fsdp")}
    if setup_distributed(torch.device("cpu")).rank == 0:
        torch.save(results, out_path)


if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes share the CPU cores
    main(Path(sys.argv[1]))
