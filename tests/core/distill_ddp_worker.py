"""Run under `torchrun --nproc_per_node N` (or as one plain process): one step's gradients through
`accumulate_gradients`, then a short `distill` run; rank 0 saves both to argv[1] for comparison.

Micro-batch size is 4 / N, so every world size sees the same global batch of 4 rows per micro-step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from moe2dense_core.distill import DistillConfig, distill
from moe2dense_core.distill.distributed import all_reduce_sum, setup_distributed, wrap_student
from moe2dense_core.distill.loop import accumulate_gradients
from moe2dense_core.distill.sampling import step_micro_batches
from moe2dense_core.distill.targets import OnlineTeacher
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher

GLOBAL_MICRO_BATCH = 4


def main(out_path: Path) -> None:
    torch.set_num_threads(1)
    ctx = setup_distributed(torch.device("cpu"))
    teacher = tiny_teacher(seed=11)
    data = random_rows(16, 12, seed=12)
    config = DistillConfig(max_steps=3, micro_batch_size=GLOBAL_MICRO_BATCH // ctx.world_size, grad_accum_steps=2,
                           lr=2e-3, ce_weight=0.3, precision="fp32", seed=5)

    student = dense_student_from_teacher(teacher)
    model = wrap_student(student, ctx)
    source = OnlineTeacher(teacher, precision="fp32", device=ctx.device, top_k=None)
    micro_rows = step_micro_batches(0, num_rows=len(data), micro_batch=config.micro_batch_size,
                                    accumulation=config.grad_accum_steps, world_size=ctx.world_size,
                                    rank=ctx.rank, seed=config.seed, shuffle=config.shuffle)
    sums = accumulate_gradients(model, source, data, micro_rows, config, precision="fp32", ctx=ctx)
    total = all_reduce_sum(sums, ctx)
    grads = {name: p.grad.detach().clone() for name, p in student.named_parameters()}

    trained = dense_student_from_teacher(teacher)
    result = distill(trained, teacher, data, config)
    if ctx.rank == 0:
        torch.save({"world_size": ctx.world_size, "loss": float(total[0]), "grads": grads,
                    "history": result.history, "state": trained.state_dict()}, out_path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
