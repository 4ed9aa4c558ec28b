"""The distill stage on several processes: torchrun over this node's GPUs (and the other nodes' under the
multi-node Job, tasks/distill_nodes.py), their output streamed to the stage's log, rank 0's metrics
replayed into the stage's MLflow run.

    W = nnodes × nproc_per_node        (`process_layout`; nproc_per_node `auto` = CUDA devices, 1 without)

`launch_distill` writes the training rows and a `WorkerSpec` (tasks/distill_worker.py) into a
work folder and runs torchrun on them, in a session of its own (W = 1 never gets here: the stage runs
`distill` in its own process). While torchrun runs, each output line goes to the stage's logger (the
Prefect run logger of the running task, else `moe2dense.distill`) and the worker's metric events are
replayed into the stage's MetricLogger every POLL_S seconds (MLflow and progress stay in this process).
It returns rank 0's `WorkerResult`. A non-zero exit raises DistillLaunchError with the exit code and the
last TAIL_LINES output lines; an exception here (Ctrl-C, a failed replay) stops the whole process group.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import torch

from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.errors import DistillError
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.logging import MetricLogger
from moe2dense_platform.processes import stop_group
from moe2dense_platform.progress import run_logger
from moe2dense_platform.recipe import DistillationConfig
from tasks.distill_nodes import NNODES_ENV, NodeGroup, announce_launch, torchrun_command
from tasks.distill_worker import WorkerResult, WorkerSpec, read_new_events, replay_events, save_rows

LOG = logging.getLogger("moe2dense.distill")
POLL_S = 1.0
TAIL_LINES = 40
_END = object()


class DistillLaunchError(DistillError):
    """The launched distillation failed; the message holds the exit code and the last output lines."""


@dataclass(frozen=True)
class ProcessLayout:
    """How many processes run where: `nproc_per_node` on each node of `group` (None: this node only)."""

    nproc_per_node: int
    group: NodeGroup | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * (self.group.nnodes if self.group is not None else 1)

    def node_arguments(self, launch: int) -> list[str]:
        """torchrun's arguments for this node in launch `launch` (`--standalone` on one node)."""
        return ["--standalone"] if self.group is None else self.group.torchrun_arguments(launch)


def local_processes(nproc_per_node: int | Literal["auto"]) -> int:
    """Processes on this node: the number given, or for `auto` one per CUDA device (1 without CUDA)."""
    return max(torch.cuda.device_count(), 1) if nproc_per_node == "auto" else nproc_per_node


def process_layout(distillation: DistillationConfig, env: Mapping[str, str] = os.environ) -> ProcessLayout:
    """The recipe's process counts on this node, its nodes from the environment (tasks/distill_nodes.py).

    The recipe's `nnodes` states the global batch, so it must match MOE2DENSE_NNODES (unset: 1 node);
    DistillError otherwise, before anything is loaded.
    """
    group = NodeGroup.from_environment(env)
    nodes = group.nnodes if group is not None else 1
    if distillation.nnodes != nodes:
        where = f"{NNODES_ENV}={nodes}" if group is not None else f"{NNODES_ENV} is unset (one node)"
        raise DistillError(
            f"distillation.nnodes={distillation.nnodes} but {where}: run it on that many nodes (the Job of "
            "infra/kubernetes/distill-multinode.yaml sets the variables) or change distillation.nnodes"
        )
    return ProcessLayout(local_processes(distillation.nproc_per_node), group if nodes > 1 else None)


def launch_distill(
    rows: torch.Tensor,
    config: DistillConfig,
    *,
    layout: ProcessLayout,
    workdir: Path,
    home: Path,
    student_dir: Path,
    output_dir: Path,
    logger: MetricLogger,
    teacher_model: Path | None = None,
    teacher_cache_uri: str | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool | Literal["extend"] = False,
    student_digest: str | None = None,
    teacher_digest: str | None = None,
) -> WorkerResult:
    """Distill on `layout`'s processes (module docstring); rank 0 saves the student into `output_dir`.

    rows [N, L]: the training rows; teacher_model (online) or teacher_cache_uri (the stored top-k cache
    of stage teacher_logits); the rest as `distill`'s arguments. `home` holds a multi-node group's
    announcements.
    """
    for name, folder in (("student_dir", student_dir), ("teacher_model", teacher_model)):
        if folder is not None and not (folder / "config.json").is_file():
            raise DistillError(f"{name} {folder} holds no config.json: not a model folder")
    workdir.mkdir(parents=True, exist_ok=True)
    spec = WorkerSpec(
        student_dir=student_dir,
        teacher_model=teacher_model,
        teacher_cache_uri=teacher_cache_uri,
        rows_file=workdir / "rows.safetensors",
        config=config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        student_digest=student_digest,
        teacher_digest=teacher_digest,
        output_dir=output_dir,
        metrics_file=workdir / "metrics.jsonl",
        result_file=workdir / "result.json",
    )
    save_rows(rows, spec.rows_file)
    spec_file = workdir / "spec.json"
    atomic_write_text(spec_file, spec.model_dump_json(indent=2))
    launch = 0
    if layout.group is not None:
        launch = announce_launch(layout.group.folder(home), spec_file, layout.nproc_per_node)
    offset = 0

    def replay_new_events() -> None:
        nonlocal offset
        events, offset = read_new_events(spec.metrics_file, offset)
        replay_events(events, logger)

    command = torchrun_command(layout.nproc_per_node, spec_file, layout.node_arguments(launch))
    what = f"distillation on {layout.world_size} processes"
    run_logger(LOG).info("%s: %s", what, " ".join(command))
    run_streaming(command, cwd=workdir, log=run_logger(LOG), on_poll=replay_new_events, what=what)
    replay_new_events()
    if not spec.result_file.is_file():
        raise DistillLaunchError(f"{what} exited with code 0 but rank 0 wrote no result {spec.result_file}")
    return WorkerResult.model_validate_json(spec.result_file.read_text(encoding="utf-8"))


def _pump(stream: IO[str], lines: queue.Queue) -> None:
    """Move the child's output lines into `lines`, then _END."""
    with stream:
        for line in stream:
            lines.put(line.rstrip("\n"))
    lines.put(_END)


def run_streaming(
    command: list[str],
    *,
    cwd: Path,
    log: logging.Logger | logging.LoggerAdapter,
    on_poll: Callable[[], None],
    what: str,
    poll_s: float = POLL_S,
) -> None:
    """Run `command` in its own session, log each output line (stdout and stderr) from this thread, call
    `on_poll` at least every `poll_s` seconds while it runs; DistillLaunchError on a non-zero exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # whole lines, no bars
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    polled = time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=poll_s)
            except queue.Empty:
                line = None
            if line is _END:
                break
            if line is not None:
                tail.append(line)
                log.info("%s", line)
            if time.monotonic() - polled >= poll_s:
                on_poll()
                polled = time.monotonic()
        code = process.wait()
    except BaseException:
        stop_group(process.pid)
        raise
    if code != 0:
        ended = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        raise DistillLaunchError(
            f"{what} failed: it {ended}; its last {len(tail)} output lines:\n" + "\n".join(tail)
        )
