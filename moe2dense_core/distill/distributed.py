"""Running the same loop on one process or many (`torchrun` / `accelerate launch`; DDP or FSDP).

A launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `setup_distributed` then
joins the process group (NCCL with CUDA, gloo on CPU) unless the caller already did. Each process
takes its own slice of every global batch (see `moe2dense_core.distill.sampling`), and DDP / FSDP
average gradients, so N processes compute the gradient of the same global batch as one process would.
FSDP (`parallelism="fsdp"`, PyTorch's `fully_shard`) shards parameters, gradients and optimizer states
across processes, one unit per decoder layer (the model's `_no_split_modules`) plus the root, for
students too big for one GPU. With precision "bf16" (as `precision.resolve_precision` decided) FSDP
all-gathers and computes with bf16 copies of the parameters and reduce-scatters gradients in fp32
(`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`); the sharded master weights, gradients
and optimizer states stay fp32. DDP keeps fp32 replicas and runs the forward under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from moe2dense_core.errors import DistillError


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup_distributed(default_device: torch.device) -> DistributedContext:
    """Join the launcher's process group if there is one; single process otherwise.

    Device: cuda:LOCAL_RANK under a multi-process CUDA launch, else `default_device` (the student's).
    """
    world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(rank=0, world_size=1, device=default_device)
    use_cuda = torch.cuda.is_available() and default_device.type != "cpu"
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def wrap_student(
    student: nn.Module, ctx: DistributedContext, parallelism: str = "ddp", precision: str = "fp32"
) -> nn.Module:
    """The module to run forward/backward on: DDP wrapper, or the student sharded in place (FSDP, with
    the mixed precision of the module docstring when precision == "bf16"), when more than one process
    runs; the student itself otherwise."""
    if not ctx.active:
        return student
    if parallelism == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=device_ids)
    if parallelism == "fsdp":
        policy = fsdp_mixed_precision(precision)
        unit_names = set(getattr(student, "_no_split_modules", None) or ())
        units = [m for m in student.modules() if type(m).__name__ in unit_names]
        if not units:
            raise DistillError(
                f"parallelism='fsdp' needs the student's decoder-layer classes in `_no_split_modules`; "
                f"{type(student).__name__} lists {sorted(unit_names)}"
            )
        for unit in units:
            fully_shard(unit, mp_policy=policy)
        fully_shard(student, mp_policy=policy)
        return student
    raise DistillError(f"unknown parallelism {parallelism!r}; choose ddp or fsdp")


def fsdp_mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """FSDP's policy for a resolved precision: bf16 parameters in compute, fp32 gradient reduction for
    "bf16"; everything in the parameters' own dtype (fp32) for "fp32"."""
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision == "fp32":
        return MixedPrecisionPolicy()
    raise DistillError(f"unknown resolved precision {precision!r}; expected bf16 or fp32")


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, backward passes all-reduce gradients only if `enabled` (accumulation steps skip it)."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def as_float(value: torch.Tensor) -> float:
    """A scalar tensor (possibly a DTensor under FSDP) as a Python float."""
    full = value.full_tensor() if hasattr(value, "full_tensor") else value
    return float(full)


def all_reduce_sum(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Σ over processes of `values` (a float64 tensor); identity on one process."""
    if ctx.active:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def gather_objects(obj: object, ctx: DistributedContext) -> list[object]:
    """[obj of rank 0, obj of rank 1, …] on every process; [obj] on one process."""
    if not ctx.active:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def main_value(obj: object, ctx: DistributedContext) -> object:
    """Rank 0's `obj` on every process (a broadcast); `obj` itself on one process."""
    if not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistributedContext) -> None:
    if ctx.active:
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group, if this process joined one (the end of a launched process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
