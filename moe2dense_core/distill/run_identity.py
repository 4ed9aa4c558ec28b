"""Run identity: what a checkpoint must share with the run that resumes it.

Every checkpoint records, in `run.json`, the flat map
  config.<field>   each DistillConfig field that shapes the numbers (all but EXECUTION_ONLY_FIELDS)
  global_batch     G = micro_batch_size · grad_accum_steps · world_size sequences per optimizer step
  data_digest      sha256 of the training rows [N, L] (`data.tokens_digest`)
  teacher          "online", or "topk_cache(k=…)" for cached targets
  teacher_digest   the caller's id of the teacher weights (a cache's recorded one when not given), or None
  student_digest   the caller's id of the student's starting weights, or None
and `config_digest`, sha256 of the canonical JSON of the config.* entries and global_batch (one id of
the schedule, loss and batch a run was made with). How G is split into processes, micro-batches and
accumulation steps changes only the order of float sums (`sampling`: the same rows every step), so a
run resumes on another number of processes with the same G (e.g. 2 processes × micro-batch 2 → 1 × 4).
Resuming (`resume=True`) needs every entry equal. Extending (`resume="extend"`) also lets
`config.max_steps` change, to any total ≥ the checkpoint's step; the lr schedule is then rebuilt
for the new total from the checkpoint's step on (see `schedule.warmup_cosine_scheduler`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.errors import DistillError
from moe2dense_core.io.digests import json_sha256

# Fields that change how a run executes or is recorded, never its numbers (the per-process split of the
# global batch among them: module docstring).
EXECUTION_ONLY_FIELDS = frozenset(
    {
        "gradient_checkpointing",
        "parallelism",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "micro_batch_size",
        "grad_accum_steps",
    }
)
PER_PROCESS_BATCH = ("config.micro_batch_size", "config.grad_accum_steps")
EXTENDABLE = "config.max_steps"


def _canonical(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), so recorded and current compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def run_identity(
    config: DistillConfig,
    *,
    world_size: int,
    data_digest: str,
    teacher: str,
    teacher_digest: str | None,
    student_digest: str | None,
) -> dict[str, Any]:
    """The identity map of the module docstring, JSON-canonical, for a run on `world_size` processes."""
    shaping = {
        f"config.{name}": value
        for name, value in config.model_dump(mode="json").items()
        if name not in EXECUTION_ONLY_FIELDS
    }
    shaping["global_batch"] = config.sequences_per_step(world_size)
    identity = {
        **shaping,
        "data_digest": data_digest,
        "teacher": teacher,
        "teacher_digest": teacher_digest,
        "student_digest": student_digest,
    }
    canonical = _canonical(identity)
    return canonical | {"config_digest": json_sha256({k: canonical[k] for k in shaping})}


def upgrade_identity(recorded: dict[str, Any], world_size: int) -> dict[str, Any]:
    """An identity recorded before global_batch existed (it named the per-process micro_batch_size and
    grad_accum_steps), as today's map: those two replaced by their global batch on the `world_size`
    processes that wrote it. Today's identities are returned unchanged."""
    if "global_batch" in recorded or not all(k in recorded for k in PER_PROCESS_BATCH):
        return recorded
    micro, accumulation = (recorded[k] for k in PER_PROCESS_BATCH)
    kept = {k: v for k, v in recorded.items() if k not in PER_PROCESS_BATCH}
    return kept | {"global_batch": micro * accumulation * world_size}


def check_resumable(
    recorded: dict[str, Any], current: dict[str, Any], *, checkpoint: Path, step: int, extend: bool
) -> None:
    """Raise DistillError naming every differing entry unless `current` may resume `checkpoint` (at `step`).

    extend=False: all entries equal. extend=True: all but config.max_steps (and the config_digest it
    changes), and the new max_steps ≥ step.
    """
    ignored = {EXTENDABLE, "config_digest"} if extend else {"config_digest"}
    differ = sorted(
        k for k in (recorded.keys() | current.keys()) - ignored if recorded.get(k) != current.get(k)
    )
    if differ:
        hint = (
            " (resume='extend' continues a run to a new max_steps, its lr schedule rebuilt for the new total)"
            if differ == [EXTENDABLE]
            else "; a different run needs a new checkpoint_dir"
        )
        raise DistillError(
            f"checkpoint {checkpoint} was written by another run; differing: "
            + "; ".join(f"{k}: checkpoint {recorded.get(k)!r}, now {current.get(k)!r}" for k in differ)
            + hint
        )
    if current[EXTENDABLE] < step:
        raise DistillError(
            f"checkpoint {checkpoint} is at step {step}, past the requested max_steps={current[EXTENDABLE]}"
        )
