"""Training checkpoints that resume exactly, on any number of processes: model, optimizer, RNG states,
data position, run identity.

Layout of `checkpoint_dir/step_00000010/` (schema 2):
  state/            a `torch.distributed.checkpoint` (DCP) folder of {"model": …, "optimizer": …} keyed by
                    parameter name: every process writes what it holds (its FSDP shards; a tensor that
                    DDP or one process replicates, once) to `__<rank>_0.distcp`, rank 0 the `.metadata`
  trainer.json      schema_version, step, data position (training sequences consumed), world size
  rng_rank{r}.pt    torch CPU (and CUDA) and Python RNG states of process r
  run.json          the run identity (`run_identity`): config fields, global batch, digests
DCP reshards on load, so a checkpoint written by W processes resumes on W' processes, plain, DDP or
FSDP alike; with the same global batch the continued run equals the uninterrupted one up to the order
of float sums (`run_identity`). RNG states are restored when W' = W; otherwise every process keeps its
own stream (the loop draws no random numbers itself; only dropout would see the difference).
No lr-scheduler state: the schedule is a function of the config and the step, rebuilt on resume.
Each checkpoint is written under `.tmp_<name>`, its files fsynced, and renamed when complete, so a crash
or a full disk never leaves a half checkpoint under a `step_*` name and never touches the previous one
(the next save removes what a killed write left under `.tmp_*`); only the newest `keep` are kept. With
several nodes, `checkpoint_dir` must be one shared filesystem (every process writes its own file).
Schema 1 checkpoints (`model.safetensors` and `trainer_state.pt` with full state dicts, no DCP folder)
still load.
Loading unpickles nothing beyond tensors and plain containers: tensors and the optimizer's plain values
through `torch.load(weights_only=True)`, DCP's `.metadata` pickle only after its classes were checked
against DCP's own metadata classes (`_check_metadata`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from moe2dense_core.distill.distributed import DistributedContext, barrier, gather_objects, main_value
from moe2dense_core.distill.run_identity import upgrade_identity
from moe2dense_core.errors import DistillError

SCHEMA_VERSION = 2
_PREFIX = "step_"
STATE_DIR = "state"
TRAINER_FILE = "trainer.json"
RUN_FILE = "run.json"
LEGACY_MODEL_FILE = "model.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"
_METADATA_FILE = ".metadata"
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}


@dataclass(frozen=True)
class TrainerPosition:
    """Where training stands: optimizer steps done and training sequences consumed (global)."""

    step: int
    data_position: int


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"{_PREFIX}{step:08d}"


def _complete(path: Path) -> bool:
    return path.is_dir() and ((path / TRAINER_FILE).is_file() or (path / LEGACY_STATE_FILE).is_file())


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete `step_*` directory under `checkpoint_dir` (either schema), or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    return max((p for p in root.glob(f"{_PREFIX}*") if _complete(p)), key=checkpoint_step, default=None)


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a `step_*` directory holds, from its name."""
    return int(Path(path).name[len(_PREFIX) :])


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's unsharded state on CPU, keyed by parameter name (collective under FSDP: every process
    calls it; with several processes only rank 0 gets the tensors)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state), unsharded, on CPU, keyed by parameter name (as `full_model_state`)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return full_model_state(model), get_optimizer_state_dict(model, optimizer, options=options)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group that it assumes one process: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_trainer_files(
    tmp: Path, position: TrainerPosition, rng_states: list[dict[str, Any]], identity: dict[str, Any]
) -> None:
    trainer = {
        "schema_version": SCHEMA_VERSION,
        "step": position.step,
        "data_position": position.data_position,
        "world_size": len(rng_states),
    }
    (tmp / TRAINER_FILE).write_text(json.dumps(trainer, indent=2, sort_keys=True), encoding="utf-8")
    for rank, state in enumerate(rng_states):
        torch.save(state, tmp / f"rng_rank{rank}.pt")
    (tmp / RUN_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True), encoding="utf-8")
    for path in sorted(tmp.rglob("*")):
        _fsync(path)


def _publish(tmp: Path, final: Path, keep: int) -> None:
    """Rename the complete `tmp` to `final` (replacing a same-step one), keep the newest `keep`."""
    root = final.parent
    replaced = final.rename(root / f".old_{final.name}") if final.exists() else None
    tmp.rename(final)
    _fsync(root)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    older = sorted((p for p in root.glob(f"{_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
    for stale in older[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


def _one_line(err: BaseException) -> str:
    """An error as one line; for DCP's CheckpointException, what each failed process raised (no traceback)."""
    if isinstance(err, CheckpointException):
        return "; ".join(
            f"process {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in err.failures.items()
        )
    return " ".join(str(err).split())


def save_checkpoint(
    checkpoint_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    position: TrainerPosition,
    identity: dict[str, Any],
    keep: int,
    ctx: DistributedContext,
) -> Path:
    """Write one checkpoint (module docstring); collective: every process calls it with its own state.

    `model` is the student (sharded in place under FSDP, not a DDP wrapper); `identity` the run's
    `run_identity`. Returns the final directory. A failed write on any process (e.g. a full disk) raises
    DistillError on every process, naming the folder; the temporary directory is removed and every
    existing checkpoint is left as it was.
    """
    root = Path(checkpoint_dir)
    final = checkpoint_path(root, position.step)
    tmp = root / f".tmp_{final.name}"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".tmp_*"):  # a write that was killed midway
            shutil.rmtree(leftover, ignore_errors=True)
        tmp.mkdir()
    barrier(ctx)
    previous = latest_checkpoint(root)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    rng_states = gather_objects(rng_state(), ctx)
    failure: str | None = None
    try:
        with _single_process_quiet():
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / STATE_DIR)
    except (OSError, RuntimeError, CheckpointException) as err:  # DCP wraps what its writers raised
        failure = _one_line(err)
    failures = [f for f in gather_objects(failure, ctx) if f is not None]
    if ctx.is_main and not failures:
        try:
            _write_trainer_files(tmp, position, rng_states, identity)
            _publish(tmp, final, keep)
        except (OSError, RuntimeError) as err:  # torch.save wraps a failed write in RuntimeError
            failures.append(_one_line(err))
    failures = main_value(failures, ctx)
    if failures:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        free_mib = shutil.disk_usage(root).free / 2**20
        kept = (
            f"the newest complete checkpoint {previous.name} is unchanged"
            if previous
            else "no earlier checkpoint"
        )
        raise DistillError(
            f"could not write checkpoint {final.name} into {root} ({free_mib:.1f} MiB free): "
            f"{failures[0]}; {kept}"
        )
    return final


def checkpoint_world_size(path: str | Path) -> int:
    """How many processes wrote the checkpoint at `path` (schema 1: one RNG file per process)."""
    path = Path(path)
    if (path / TRAINER_FILE).is_file():
        return int(json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))["world_size"])
    return len(list(path.glob("rng_rank*.pt")))


def read_run_identity(path: str | Path) -> dict[str, Any]:
    """The run identity a checkpoint directory recorded (`run.json`), in today's form (`upgrade_identity`)."""
    file = Path(path) / RUN_FILE
    if not file.is_file():
        raise DistillError(
            f"checkpoint {path} lacks {RUN_FILE} (its run cannot be verified); use a new checkpoint_dir"
        )
    return upgrade_identity(json.loads(file.read_text(encoding="utf-8")), checkpoint_world_size(path))


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the classes DCP's metadata is made of (and torch dtypes); anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if module == _METADATA_MODULE or (module, name) in _METADATA_GLOBALS or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def _check_metadata(state_dir: Path) -> None:
    """Refuse a DCP folder whose `.metadata` pickle names anything but DCP metadata classes (DCP itself
    loads it with plain `pickle.load`)."""
    file = state_dir / _METADATA_FILE
    if not file.is_file():
        raise DistillError(f"checkpoint folder {state_dir} lacks {_METADATA_FILE}")
    try:
        _MetadataUnpickler(io.BytesIO(file.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError) as err:
        raise DistillError(f"checkpoint metadata {file} is not a DCP checkpoint's: {err}") from err


class _PlainValuesLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, but a non-tensor value (the optimizer's lr, betas, …) is first read with
    `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on anything but tensors and plain containers
        value.seek(0)
        super().load_bytes(read_item, value)


def _load_schema_1(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    for name in (LEGACY_MODEL_FILE, LEGACY_STATE_FILE):
        if not (path / name).is_file():
            raise DistillError(f"checkpoint {path} lacks {name}")
    state = torch.load(path / LEGACY_STATE_FILE, weights_only=True)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(path / LEGACY_MODEL_FILE), options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    return state


def _load_schema_2(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if not (path / TRAINER_FILE).is_file():
        raise DistillError(f"checkpoint {path} lacks {TRAINER_FILE}")
    trainer = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
    if trainer.get("schema_version") != SCHEMA_VERSION:
        raise DistillError(
            f"checkpoint {path} has schema_version {trainer.get('schema_version')!r}; "
            f"this version reads {SCHEMA_VERSION} (and 1)"
        )
    _check_metadata(path / STATE_DIR)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path / STATE_DIR, planner=_PlainValuesLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return trainer


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistributedContext
) -> TrainerPosition:
    """Restore model, optimizer and (same world size) this process's RNG from `path`; returns the position.

    Collective: every process calls it and reads what it holds (its FSDP shards, or full tensors).
    Raises DistillError when files are missing or the weights do not fit the student.
    """
    path = Path(path)
    legacy = (path / LEGACY_STATE_FILE).is_file()
    try:
        trainer = _load_schema_1(path, model, optimizer) if legacy else _load_schema_2(path, model, optimizer)
    except (RuntimeError, KeyError, ValueError, CheckpointException) as err:
        raise DistillError(f"checkpoint {path} does not fit the student: {err}") from err
    if int(trainer["world_size"]) == ctx.world_size:
        rng_file = path / f"rng_rank{ctx.rank}.pt"
        if not rng_file.is_file():
            raise DistillError(f"checkpoint {path} lacks {rng_file.name}")
        set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainerPosition(step=int(trainer["step"]), data_position=int(trainer["data_position"]))
