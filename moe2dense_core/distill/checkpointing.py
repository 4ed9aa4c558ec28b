"""Training checkpoints that resume exactly: model, optimizer, RNG states, data position, run identity.

Layout of `checkpoint_dir/step_00000010/`:
  model.safetensors        the student's full (unsharded) weights by parameter name
  trainer_state.pt         optimizer state keyed by parameter name, step, data position (training
                           sequences consumed), world size
  rng_rank{r}.pt           torch CPU (and CUDA) and Python RNG states of process r
  run.json                 the run identity (`run_identity`): config fields, data / teacher / student digests
No lr-scheduler state: the schedule is a function of the config and the step, rebuilt on resume.
Each checkpoint directory is written under a temporary name, its files fsynced, and renamed when
complete, so a crash or a full disk never leaves a half checkpoint under a `step_*` name and never
touches the previous one (the next save removes what a killed write left under `.tmp_*`); only the
newest `keep` are kept.
Loading uses `torch.load(weights_only=True)`: nothing pickled beyond tensors and plain containers.
Model and optimizer states go through `torch.distributed.checkpoint.state_dict` with full state dicts,
so the same files serve a plain, DDP or FSDP student (FSDP shards are gathered on save and re-sharded
on load).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from moe2dense_core.errors import DistillError

_PREFIX = "step_"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class TrainerPosition:
    """Where training stands: optimizer steps done and training sequences consumed (global)."""

    step: int
    data_position: int


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"{_PREFIX}{step:08d}"


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete `step_*` directory under `checkpoint_dir`, or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return max(done, key=checkpoint_step, default=None)


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


def full_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state), unsharded, on CPU, keyed by parameter name.

    Collective under FSDP: every process calls it; with several processes only rank 0 gets the dicts.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous copies where tensors share storage (tied embeddings), which safetensors refuses."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.detach().clone().contiguous() if ptr in seen else tensor.detach().contiguous()
        seen.add(ptr)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_files(
    tmp: Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    position: TrainerPosition,
    rng_states: list[dict[str, Any]],
    identity: dict[str, Any],
) -> None:
    save_file(_unshared(model_state), str(tmp / MODEL_FILE))
    torch.save(
        {
            "step": position.step,
            "data_position": position.data_position,
            "optimizer": optimizer_state,
            "world_size": len(rng_states),
        },
        tmp / STATE_FILE,
    )
    for rank, state in enumerate(rng_states):
        torch.save(state, tmp / f"rng_rank{rank}.pt")
    (tmp / RUN_FILE).write_text(json.dumps(identity, indent=2, sort_keys=True), encoding="utf-8")
    for path in tmp.iterdir():
        _fsync(path)


def save_checkpoint(
    checkpoint_dir: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    position: TrainerPosition,
    rng_states: list[dict[str, Any]],
    identity: dict[str, Any],
    keep: int,
) -> Path:
    """Write one checkpoint (see module docstring) from `full_training_state`; call on one process.

    `rng_states[r]` is process r's `rng_state()`; `identity` the run's `run_identity`. Returns the final
    directory. A failed write (e.g. a full disk) raises DistillError naming the folder; the temporary
    directory is removed and every existing checkpoint is left as it was.
    """
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(root, position.step)
    previous = latest_checkpoint(root)
    for leftover in root.glob(".tmp_*"):  # a write that was killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp_{final.name}_"))
    try:
        try:
            _write_files(tmp, model_state, optimizer_state, position, rng_states, identity)
        except Exception as err:  # OSError, or the wrappers safetensors / torch.save put around it
            free_mib = shutil.disk_usage(root).free / 2**20
            kept = f"the newest complete checkpoint {previous.name} is unchanged" if previous else "no earlier checkpoint"
            raise DistillError(
                f"could not write checkpoint {final.name} into {root} ({free_mib:.1f} MiB free): {err}; {kept}"
            ) from err
        replaced = final.rename(root / f".old_{final.name}") if final.exists() else None
        tmp.rename(final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    older = sorted((p for p in root.glob(f"{_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
    for stale in older[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_run_identity(path: str | Path) -> dict[str, Any]:
    """The run identity a checkpoint directory recorded (`run.json`)."""
    file = Path(path) / RUN_FILE
    if not file.is_file():
        raise DistillError(f"checkpoint {path} lacks {RUN_FILE} (its run cannot be verified); use a new checkpoint_dir")
    return json.loads(file.read_text(encoding="utf-8"))


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a `step_*` directory holds, from its name."""
    return int(Path(path).name[len(_PREFIX):])


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    world_size: int,
) -> TrainerPosition:
    """Restore model, optimizer and this process's RNG from `path`; returns the position.

    Every process calls it (it reads the full files and keeps its own shard under FSDP). Raises
    DistillError when files are missing, the weights do not fit the student, or the checkpoint was
    written by another number of processes (data order and RNG streams would not continue exactly).
    """
    path = Path(path)
    for name in (MODEL_FILE, STATE_FILE, f"rng_rank{rank}.pt"):
        if not (path / name).is_file():
            raise DistillError(f"checkpoint {path} lacks {name}")
    state = torch.load(path / STATE_FILE, weights_only=True)
    if state["world_size"] != world_size:
        raise DistillError(
            f"checkpoint {path} was written by {state['world_size']} processes; resuming with {world_size} "
            "would not continue exactly"
        )
    options = StateDictOptions(full_state_dict=True)
    try:
        set_model_state_dict(model, load_file(path / MODEL_FILE), options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    except (RuntimeError, KeyError, ValueError) as err:
        raise DistillError(f"checkpoint {path} does not fit the student: {err}") from err
    set_rng_state(torch.load(path / f"rng_rank{rank}.pt", weights_only=True))
    return TrainerPosition(step=int(state["step"]), data_position=int(state["data_position"]))
