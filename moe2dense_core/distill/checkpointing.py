"""Training checkpoints that resume exactly: model, optimizer, scheduler, RNG states, data position.

Layout of `checkpoint_dir/step_00000010/`:
  model.safetensors        the student's full (unsharded) weights by parameter name
  trainer_state.pt         optimizer state keyed by parameter name, scheduler state, step, data position
                           (training sequences consumed), world size
  rng_rank{r}.pt           torch CPU (and CUDA) and Python RNG states of process r
Each checkpoint directory is written under a temporary name and renamed when complete, so a crash
never leaves a half checkpoint under a `step_*` name; only the newest `keep` are kept.
Loading uses `torch.load(weights_only=True)`: nothing pickled beyond tensors and plain containers.
Model and optimizer states go through `torch.distributed.checkpoint.state_dict` with full state dicts,
so the same files serve a plain, DDP or FSDP student (FSDP shards are gathered on save and re-sharded
on load).
"""

from __future__ import annotations

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
    return max(done, key=lambda p: int(p.name[len(_PREFIX):]), default=None)


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


def save_checkpoint(
    checkpoint_dir: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: TrainerPosition,
    rng_states: list[dict[str, Any]],
    keep: int,
) -> Path:
    """Write one checkpoint (see module docstring) from `full_training_state`; call on one process.

    `rng_states[r]` is process r's `rng_state()`. Returns the final directory.
    """
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(root, position.step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp_{final.name}_"))
    try:
        save_file(_unshared(model_state), str(tmp / MODEL_FILE))
        torch.save(
            {
                "step": position.step,
                "data_position": position.data_position,
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "world_size": len(rng_states),
            },
            tmp / STATE_FILE,
        )
        for rank, state in enumerate(rng_states):
            torch.save(state, tmp / f"rng_rank{rank}.pt")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    older = sorted((p for p in root.glob(f"{_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
    for stale in older[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    world_size: int,
) -> TrainerPosition:
    """Restore model, optimizer, scheduler and this process's RNG from `path`; returns the position.

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
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(torch.load(path / f"rng_rank{rank}.pt", weights_only=True))
    return TrainerPosition(step=int(state["step"]), data_position=int(state["data_position"]))
