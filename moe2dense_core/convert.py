"""`convert`: the whole MoE → dense conversion in one call, with every check before calibration.

    convert(model_dir, batches, out_dir, PlanConfig(scoring="do_acp", grouping="prune"))
is collect_stats → build_plan → assemble, except that everything that can be refused from files
alone is refused FIRST, before the expensive calibration pass: the checkpoint (integrity, config vs
weights, supported model_type), the plan request against the teacher's E and top-k (K < k, K > E,
…) and the output folder. Use the three calls separately to reuse one calibration across plans.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import get_spec
from moe2dense_core.assembly.checkpoint import DEFAULT_MAX_SHARD_BYTES, AssemblyResult, assemble
from moe2dense_core.assembly.output_dir import check_output_dir
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.io.resolve import resolve_model
from moe2dense_core.io.validate import validate_checkpoint
from moe2dense_core.plan import PlanConfig, build_plan, validate_plan_config
from moe2dense_core.stats.collect import collect_stats


def convert(
    model_dir: str | Path,
    batches: Iterable[torch.Tensor],
    out_dir: str | Path,
    plan_config: PlanConfig | None = None,
    *,
    overwrite: bool = False,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    revision: str | None = None,
) -> AssemblyResult:
    """Calibrate on `batches` (LongTensor [B, T] token ids), plan with `plan_config` (default
    PlanConfig(): do_acp, K = k, prune, uniform), and write the dense checkpoint to `out_dir`.

    Raises CheckpointError / UnsupportedArchitectureError / PlanError / OutputDirError before the
    first batch is read when the checkpoint, the plan request or the output folder is unusable.
    The plan is in the result's provenance (`result.provenance.plan`).
    """
    plan_config = plan_config or PlanConfig()
    source_dir = resolve_model(model_dir, revision=revision)
    with CheckpointReader(source_dir) as reader:
        spec = get_spec(reader.model_type)
        dims = validate_checkpoint(reader, spec)
        validate_plan_config(plan_config, dims.num_experts, dims.top_k)
        check_output_dir(out_dir, overwrite=overwrite, source_dir=source_dir)

        stats = collect_stats(source_dir, batches)

        def all_experts(layer: int) -> ExpertWeights:
            return spec.read_experts(reader, layer, list(range(dims.num_experts)))

        plan = build_plan(stats, plan_config, expert_weights=all_experts)
    return assemble(
        model_dir,
        plan,
        out_dir,
        overwrite=overwrite,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
        revision=revision,
    )
