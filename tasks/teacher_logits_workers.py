"""The teacher pass of stage `teacher_logits` on P processes:
`python -m tasks.teacher_logits_workers SPEC.json RANK PARENT_PID`.

Rank r of P loads the teacher (`spec.teacher_dir`) on its device — cuda:r when the pass runs on CUDA
(`rank_device`), else the CPU with `spec.threads` threads —, reads the rows [N, L] (`spec.rows_file`,
tasks/distill_worker.py's `save_rows`) and writes the top-k cache shards i ≡ r (mod P) into
`spec.out_dir` (moe2dense_core.distill.topk_cache.write_topk_shards: each file appears complete, by
rename), then its part of the manifest as `part_<r>.json` there. No collective: the shards are
independent.

`run_teacher_workers` starts the P processes (own sessions, output to `rank_<r>.log` in the work
folder), hands every finished shard file to `on_shard(path)` as it appears (the stage stores and
deletes it) and returns the P parts for `merge_manifest_parts`. The first process that fails — or an
exception here, e.g. from `on_shard` — stops them all: DistillError with the rank, its exit code and
the end of its log. P = 1 needs none of this: the stage calls `teacher_pass` in its own process.
A SIGKILLed stage cannot stop its ranks (they run in their own sessions), so each rank stops by itself
after the shard it is writing once its parent process is gone (`stop_if_orphaned`): a killed stage
holds no teacher copy busy beyond one shard.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.distill.topk_cache import (
    CacheShard,
    LogprobDtype,
    TopKCacheManifest,
    read_manifest,
    shard_name,
    shard_spans,
    write_topk_shards,
)
from moe2dense_core.errors import DistillError
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.pretrained import load_causal_lm
from moe2dense_platform.processes import log_tail, start_process, stop_group
from tasks.distill_worker import load_rows, save_rows

WORKER_MODULE = "tasks.teacher_logits_workers"
POLL_S = 0.5


class TeacherPassSpec(BaseModel):
    """Everything a rank needs (module docstring): `write_topk_shards`' settings, the device the pass runs
    on (`cpu`, `cuda`, or with processes = 1 any device such as `cuda:1`) and the CPU threads per process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher_dir: Path
    rows_file: Path
    out_dir: Path
    k: int
    temperature: float
    teacher_top_k: int | None
    teacher_digest: str
    batch_size: int
    rows_per_shard: int
    precision: str
    logprob_dtype: LogprobDtype
    device: str
    processes: int
    threads: int


def part_path(spec: TeacherPassSpec, rank: int) -> Path:
    return spec.out_dir / f"part_{rank:05d}.json"


def rank_device(device: str, rank: int, processes: int) -> torch.device:
    """Where rank `rank` runs: `device` itself for one process, else cuda:rank on CUDA, the CPU otherwise."""
    if processes == 1:
        return torch.device(device)
    return torch.device("cuda", rank) if torch.device(device).type == "cuda" else torch.device("cpu")


def teacher_pass(
    spec: TeacherPassSpec,
    rank: int,
    rows: torch.Tensor,
    on_shard: Callable[[Path, CacheShard], None] | None = None,
) -> TopKCacheManifest:
    """Rank `rank`'s shards of the cache over `rows` [N, L]; returns its part of the manifest."""
    device = rank_device(spec.device, rank, spec.processes)
    teacher = load_causal_lm(spec.teacher_dir, dtype=load_dtype(device)).to(device)
    return write_topk_shards(
        teacher,
        rows,
        spec.out_dir,
        spec.k,
        temperature=spec.temperature,
        teacher_top_k=spec.teacher_top_k,
        teacher_digest=spec.teacher_digest,
        batch_size=spec.batch_size,
        rows_per_shard=spec.rows_per_shard,
        precision=spec.precision,
        logprob_dtype=spec.logprob_dtype,
        rank=rank,
        processes=spec.processes,
        on_shard=on_shard,
    )


def run_teacher_workers(
    spec: TeacherPassSpec, rows: torch.Tensor, workdir: Path, on_shard: Callable[[Path], None]
) -> list[TopKCacheManifest]:
    """Start `spec.processes` ranks on `rows` [N, L] and wait for them (module docstring); the ranks' parts."""
    workdir.mkdir(parents=True, exist_ok=True)
    save_rows(rows, spec.rows_file)
    spec_file = workdir / "spec.json"
    atomic_write_text(spec_file, spec.model_dump_json(indent=2))
    pending = [shard_name(i) for i in range(len(shard_spans(rows.shape[0], spec.rows_per_shard)))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    logs = [workdir / f"rank_{rank:05d}.log" for rank in range(spec.processes)]
    workers = [
        start_process(
            [sys.executable, "-m", WORKER_MODULE, str(spec_file), str(rank), str(os.getpid())],
            env,
            workdir,
            log,
        )
        for rank, log in enumerate(logs)
    ]
    try:
        while True:
            codes = [worker.poll() for worker in workers]
            for name in [name for name in pending if (spec.out_dir / name).is_file()]:
                on_shard(spec.out_dir / name)
                pending.remove(name)
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                raise DistillError(
                    f"teacher pass: process {rank} of {spec.processes} exited with code {code}; "
                    f"the end of its log {logs[rank]}:\n{log_tail(logs[rank])}"
                )
            if None not in codes:
                break
            time.sleep(POLL_S)
    except BaseException:
        for worker in workers:
            stop_group(worker.pid)
        raise
    if pending:
        raise DistillError(f"teacher pass: every process finished but shards {pending} were never written")
    return [read_manifest(part_path(spec, rank)) for rank in range(spec.processes)]


def stop_if_orphaned(parent: int, rank: int) -> Callable[[Path, CacheShard], None]:
    """An `on_shard` for rank `rank`: DistillError once this process's parent is no longer `parent`
    (the stage that started it died, and the rank was handed to another parent)."""

    def check(path: Path, shard: CacheShard) -> None:
        if os.getppid() != parent:
            raise DistillError(
                f"teacher pass rank {rank}: the stage process {parent} is gone; stopping after {shard.file}"
            )

    return check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="One rank of the teacher pass (tasks/teacher_logits_workers.py)."
    )
    parser.add_argument("spec", type=Path)
    parser.add_argument("rank", type=int)
    parser.add_argument("parent", type=int, help="pid of the stage process that started this rank")
    args = parser.parse_args(argv)
    spec = TeacherPassSpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
    torch.set_num_threads(spec.threads)
    part = teacher_pass(spec, args.rank, load_rows(spec.rows_file), stop_if_orphaned(args.parent, args.rank))
    atomic_write_text(part_path(spec, args.rank), part.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
