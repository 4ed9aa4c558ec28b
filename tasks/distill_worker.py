"""One process of a launched distillation: `python -m tasks.distill_worker SPEC.json`, under torchrun.

The distill stage (tasks/distill_launch.py) writes a `WorkerSpec` as JSON and starts W processes on it.
Each process joins torchrun's process group (NCCL on cuda:LOCAL_RANK, gloo on CPU), loads the student,
loads the teacher (`teacher_model`, run online) or opens the stored top-k teacher-logit cache of stage
`teacher_logits` (`teacher_cache_uri`, its manifest's store URI: shards fetched as rows are read,
moe2dense_platform/stored_topk_cache.py), reads the training rows [N, L] (`rows_file`, see `save_rows`)
and runs `distill`, which gives every process its slice of each global batch. Rank 0 also
  - appends each params / metrics call of the loop to `metrics_file`, one JSON object per line
    (`JsonLinesLogger`), as training goes: the launcher replays them into its tracking (`replay_events`);
  - saves the distilled student with `save_pretrained` into `output_dir` (FSDP shards gathered first);
  - writes `result_file` (`WorkerResult`: the DistillResult fields and the parameter count), atomically.
Everything arrives through the spec (paths on one filesystem shared by all nodes; the artifact store
from the settings of the environment); MLflow tracking stays in the stage's process.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from safetensors.torch import load_file, save_file
from torch.distributed.elastic.multiprocessing.errors import record

from moe2dense_core.distill.checkpointing import full_model_state
from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.distill.distributed import barrier, setup_distributed, shutdown_distributed
from moe2dense_core.distill.loop import DistillResult, distill
from moe2dense_core.distill.precision import load_dtype
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.logging import MetricLogger, NullLogger
from moe2dense_core.pretrained import load_causal_lm
from moe2dense_platform.settings import Settings
from moe2dense_platform.storage import open_artifact_store
from moe2dense_platform.stored_topk_cache import open_stored_topk_cache

ROWS_KEY = "rows"


class WorkerSpec(BaseModel):
    """Everything a worker process needs (module docstring); one of teacher_model / teacher_cache_uri."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    student_dir: Path
    teacher_model: Path | None = None
    teacher_cache_uri: str | None = None
    rows_file: Path
    config: DistillConfig
    checkpoint_dir: Path | None = None
    resume: bool | Literal["extend"] = False
    student_digest: str | None = None
    teacher_digest: str | None = None
    output_dir: Path
    metrics_file: Path
    result_file: Path

    @model_validator(mode="after")
    def _one_teacher(self) -> WorkerSpec:
        if (self.teacher_model is None) == (self.teacher_cache_uri is None):
            raise ValueError(
                "give exactly one of teacher_model (online teacher) and teacher_cache_uri (stored cache)"
            )
        return self


class WorkerResult(BaseModel):
    """What rank 0 reports: the run's DistillResult fields and the student's parameter count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int
    tokens_seen: int
    final_metrics: dict[str, float]
    checkpoint_path: Path | None
    precision: str
    world_size: int
    history: list[dict[str, float]]
    start_step: int
    num_parameters: int

    def distill_result(self) -> DistillResult:
        return DistillResult(**self.model_dump(exclude={"num_parameters"}))


def save_rows(rows: torch.Tensor, path: Path) -> None:
    """Training rows [N, L] (int) as a safetensors file the workers read with `load_rows`."""
    save_file({ROWS_KEY: rows.contiguous()}, str(path))


def load_rows(path: Path) -> torch.Tensor:
    return load_file(str(path))[ROWS_KEY]


class JsonLinesLogger:
    """A MetricLogger appending one JSON object per call to `path`:
    {"params": {...}} | {"metrics": {...}, "step": s} | {"artifact": path, "artifact_path": p}."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, event: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(event, default=str) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._append({"params": params})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._append({"metrics": metrics, "step": step})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._append({"artifact": str(path), "artifact_path": artifact_path})


def read_new_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete JSON lines of `path` from byte `offset` on, and the offset after the last of them
    (a line still being written waits for the next call)."""
    if not path.is_file():
        return [], offset
    with open(path, "rb") as source:
        source.seek(offset)
        data = source.read()
    complete = data[: data.rfind(b"\n") + 1]
    events = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
    return events, offset + len(complete)


def replay_events(events: list[dict[str, Any]], logger: MetricLogger) -> None:
    """Send what a `JsonLinesLogger` recorded to `logger`, in order."""
    for event in events:
        if "params" in event:
            logger.log_params(event["params"])
        elif "metrics" in event:
            logger.log_metrics(event["metrics"], step=event["step"])
        else:
            logger.log_artifact(event["artifact"], event["artifact_path"])


def run(spec: WorkerSpec) -> WorkerResult | None:
    """This process's part of the distillation (module docstring); rank 0 returns the result."""
    ctx = setup_distributed(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    logging.basicConfig(level=logging.INFO, format=f"rank {ctx.rank}: %(levelname)s %(name)s: %(message)s")
    student = load_causal_lm(spec.student_dir).to(ctx.device)
    teacher = (
        load_causal_lm(spec.teacher_model, dtype=load_dtype(ctx.device))
        if spec.teacher_model is not None
        else open_stored_topk_cache(open_artifact_store(Settings()), spec.teacher_cache_uri)
    )
    logger: MetricLogger = JsonLinesLogger(spec.metrics_file) if ctx.is_main else NullLogger()
    outcome = distill(
        student,
        teacher,
        load_rows(spec.rows_file),
        spec.config,
        logger=logger,
        checkpoint_dir=spec.checkpoint_dir,
        resume=spec.resume,
        student_digest=spec.student_digest,
        teacher_digest=spec.teacher_digest,
    )
    state = full_model_state(student)  # collective under FSDP
    result = None
    if ctx.is_main:
        student.save_pretrained(spec.output_dir, state_dict=state)
        result = WorkerResult(**asdict(outcome), num_parameters=sum(p.numel() for p in student.parameters()))
        atomic_write_text(spec.result_file, result.model_dump_json())
    barrier(ctx)
    return result


@record  # torchrun's failure summary then carries this process's exception
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.distill_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("spec", type=Path, help="the WorkerSpec JSON file the launcher wrote")
    spec = WorkerSpec.model_validate_json(parser.parse_args(argv).spec.read_text(encoding="utf-8"))
    try:
        run(spec)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
