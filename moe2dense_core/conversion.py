"""`convert`: the whole MoE → dense conversion in one call, with every check before calibration.

    convert(model_dir, batches, out_dir, PlanConfig(scoring="do_acp", grouping="prune"))
is open_teacher → collect_stats → build_plan → assemble on ONE opened teacher (resolved, read and
validated once), except that everything that can be refused from files alone is refused FIRST, before
the expensive calibration pass: the checkpoint (integrity, every tensor vs config, supported
model_type, tokenizer vs vocabulary — open_teacher), the plan request against the teacher's E and
top-k (K < k, K > E, …) and the output folder. Use the calls separately to reuse one calibration
across plans.
Calibration collects only the statistics the plan reads (plan.stats_request_for), in the given mode
(`in_memory` or `layer_by_layer`, see stats/collect.py), compute dtype, device and memory bounds (the
peak-memory formula of layer_by_layer in stats/collect.py is a function of them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from moe2dense_core.assembly.checkpoint import DEFAULT_MAX_SHARD_BYTES, AssemblyResult, assemble
from moe2dense_core.assembly.output_dir import check_output_dir
from moe2dense_core.checkpoint.teacher import Teacher, using_teacher
from moe2dense_core.plan import PlanConfig, build_plan, stats_request_for, validate_plan_config
from moe2dense_core.stats.collect import Mode, collect_stats
from moe2dense_core.stats.memory_bounds import (
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_HIDDEN_BYTES,
    check_memory_bounds,
)


def convert(
    model_dir: str | Path | Teacher,
    batches: Iterable[torch.Tensor],
    out_dir: str | Path,
    plan_config: PlanConfig | None = None,
    *,
    overwrite: bool = False,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    revision: str | None = None,
    allow_pickle: bool = False,
    calibration_mode: Mode = "in_memory",
    calibration_dtype: torch.dtype | str = torch.float32,
    calibration_device: torch.device | str = "cpu",
    calibration_max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    calibration_max_hidden_bytes: int = DEFAULT_MAX_HIDDEN_BYTES,
    calibration_max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
) -> AssemblyResult:
    """Calibrate on `batches` (LongTensor [B, T] token ids), plan with `plan_config` (default
    PlanConfig(): do_acp, K = k, prune, uniform), and write the dense checkpoint to `out_dir`.

    model_dir: a local folder or Hub id (opened once with open_teacher(model_dir, revision, allow_pickle)
    and closed on return), or an already opened Teacher (used as it is, left open).
    Raises StatsError / CheckpointError / UnsupportedArchitectureError / PlanError / OutputDirError
    before the first batch is read when a memory bound, the checkpoint, the plan request or the output
    folder is unusable.
    The plan is in the result's provenance (`result.provenance.plan`).
    calibration_mode / calibration_dtype / calibration_device: collect_stats' mode, dtype ("auto": bf16
    only where the device has native bf16) and device; `dtype` is the written checkpoint's dtype.
    calibration_max_chunk_bytes / _max_hidden_bytes / _max_block_bytes: collect_stats' memory bounds, in
    bytes (the rule: stats/memory_bounds.py): the all-expert outputs [E, T_chunk, H] computed at once
    (≥ 1); (layer_by_layer) the calibration hidden states held in RAM before they spill to a memory-mapped
    temporary file (≥ 0; 0: always spill), and the float32 bytes of one block of routed experts read from
    disk (≥ 1).
    """
    bounds = {
        "max_chunk_bytes": calibration_max_chunk_bytes,
        "max_hidden_bytes": calibration_max_hidden_bytes,
        "max_block_bytes": calibration_max_block_bytes,
    }
    check_memory_bounds("calibration_", **bounds)
    plan_config = plan_config or PlanConfig()
    with using_teacher(model_dir, revision, allow_pickle) as teacher:
        validate_plan_config(plan_config, teacher.dims.num_experts, teacher.dims.top_k)
        check_output_dir(out_dir, overwrite=overwrite, source_dir=teacher.path)
        stats = collect_stats(
            teacher,
            batches,
            mode=calibration_mode,
            request=stats_request_for(plan_config),
            dtype=calibration_dtype,
            device=calibration_device,
            **bounds,
        )
        plan = build_plan(stats, plan_config, expert_weights=teacher.expert_weights)
        return assemble(
            teacher, plan, out_dir, overwrite=overwrite, dtype=dtype, max_shard_bytes=max_shard_bytes
        )
