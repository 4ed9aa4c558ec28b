"""Checkpoints (torch.distributed.checkpoint) resume on another number of processes: a 2-process DDP or
FSDP checkpoint continued on 1 process, and a 1-process checkpoint continued on 2 processes, end where
an uninterrupted 1-process run ends (same global batch). FSDP's bf16 policy computes in bf16; a
checkpoint's metadata naming anything but DCP's classes is refused before it is unpickled; a checkpoint
of the layout before DCP still resumes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moe2dense_core.distill import DistillError, distill
from moe2dense_core.distill.checkpointing import (
    STATE_DIR,
    checkpoint_world_size,
    full_training_state,
    load_checkpoint,
)
from moe2dense_core.distill.distributed import setup_distributed
from tests.core.distill_ddp_worker import full_state
from tests.core.distill_reshard_worker import PARALLELISMS, config, inputs
from tests.core.distill_tiny_models import dense_student_from_teacher, tiny_teacher

REPO = Path(__file__).resolve().parents[2]
WORKER = "tests/core/distill_reshard_worker.py"


def _two_processes(folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        WORKER,
        str(folder),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(folder / "two_processes.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted 1-process run, the 2-process runs, and 1-process resumes of 2-process checkpoints."""
    folder = tmp_path_factory.mktemp("reshard")
    teacher, data = inputs()
    straight = dense_student_from_teacher(teacher)
    distill(straight, teacher, data, config("ddp", 1), checkpoint_dir=folder / "single")
    for parallelism in PARALLELISMS:  # the 1-process step-2 checkpoint, for 2 processes to resume
        shutil.copytree(folder / "single", folder / f"one_{parallelism}")
        shutil.rmtree(folder / f"one_{parallelism}" / "step_00000004")
    two = _two_processes(folder)
    resumed_on_one = {}
    for parallelism in PARALLELISMS:
        checkpoint = folder / f"two_{parallelism}" / "step_00000002"
        assert checkpoint_world_size(checkpoint) == 2
        student = dense_student_from_teacher(tiny_teacher(seed=99))
        outcome = distill(
            student, teacher, data, config(parallelism, 1), checkpoint_dir=checkpoint.parent, resume=True
        )
        assert outcome.start_step == 2
        resumed_on_one[parallelism] = full_state(student)
    return {"single": full_state(straight), "two": two, "resumed_on_one": resumed_on_one, "folder": folder}


def _assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    # AdamW divides by sqrt(v): a gradient entry of ~1e-8 whose last bits differ (the reduction order
    # differs) moves its weight by up to ~lr. 4 steps at lr 2e-3: allow 5% of one step.
    assert actual.keys() == expected.keys()
    for name, weight in expected.items():
        assert torch.allclose(actual[name], weight, rtol=0, atol=1e-4), (what, name)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", PARALLELISMS)
def test_a_checkpoint_resumes_on_another_number_of_processes(runs: dict, parallelism: str) -> None:
    single, two = runs["single"], runs["two"][parallelism]
    _assert_close(two["straight"], single, f"2 processes ({parallelism})")
    assert two["start_step"] == 2
    _assert_close(two["resumed_from_one"], single, f"1-process checkpoint resumed on 2 ({parallelism})")
    _assert_close(
        runs["resumed_on_one"][parallelism], single, f"2-process checkpoint resumed on 1 ({parallelism})"
    )
    shards = sorted(
        p.name for p in (runs["folder"] / f"two_{parallelism}" / "step_00000002" / STATE_DIR).iterdir()
    )
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_fsdp_bf16_policy_computes_in_bf16(runs: dict) -> None:
    assert runs["two"]["bf16_logits_dtype"] == str(torch.bfloat16)


class _Planted:
    """Unpickling this runs `print`: what a tampered checkpoint could do with a plain pickle.load."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_metadata_naming_other_code_is_refused_before_unpickling(tmp_path: Path) -> None:
    teacher, data = inputs()
    checkpoints = tmp_path / "run"
    cfg = config("ddp", 1).model_copy(update={"max_steps": 1, "checkpoint_every": None})
    distill(dense_student_from_teacher(teacher), teacher, data, cfg, checkpoint_dir=checkpoints)
    (checkpoints / "step_00000001" / STATE_DIR / ".metadata").write_bytes(pickle.dumps(_Planted()))
    with pytest.raises(DistillError, match=r"builtins\.print is not part of a checkpoint's metadata"):
        distill(
            dense_student_from_teacher(teacher),
            teacher,
            data,
            cfg.model_copy(update={"max_steps": 2}),
            checkpoint_dir=checkpoints,
            resume="extend",
        )


def test_a_schema_1_checkpoint_still_resumes_exactly(tmp_path: Path) -> None:
    """The layout written before DCP (full state dicts in model.safetensors and trainer_state.pt, a run.json
    naming the per-process micro_batch_size and grad_accum_steps), rebuilt from a step-2 checkpoint."""
    teacher, data = inputs()
    cfg = config("ddp", 1)
    straight = dense_student_from_teacher(teacher)
    distill(straight, teacher, data, cfg, checkpoint_dir=tmp_path / "new")
    step_2 = tmp_path / "new" / "step_00000002"
    student = dense_student_from_teacher(teacher)
    optimizer = torch.optim.AdamW(student.parameters())
    position = load_checkpoint(
        step_2, model=student, optimizer=optimizer, ctx=setup_distributed(torch.device("cpu"))
    )
    model_state, optimizer_state = full_training_state(student, optimizer)
    legacy = tmp_path / "old" / "step_00000002"
    legacy.mkdir(parents=True)
    save_file(model_state, str(legacy / "model.safetensors"))
    torch.save(
        {
            "step": position.step,
            "data_position": position.data_position,
            "optimizer": optimizer_state,
            "world_size": 1,
        },
        legacy / "trainer_state.pt",
    )
    shutil.copy2(step_2 / "rng_rank0.pt", legacy)
    identity = json.loads((step_2 / "run.json").read_text())
    per_process = {
        "config.micro_batch_size": cfg.micro_batch_size,
        "config.grad_accum_steps": cfg.grad_accum_steps,
    }
    (legacy / "run.json").write_text(
        json.dumps({k: v for k, v in identity.items() if k != "global_batch"} | per_process)
    )

    resumed = dense_student_from_teacher(tiny_teacher(seed=99))
    outcome = distill(resumed, teacher, data, cfg, checkpoint_dir=legacy.parent, resume=True)
    assert outcome.start_step == 2
    expected = full_state(straight)
    for name, weight in full_state(resumed).items():
        assert torch.equal(weight, expected[name]), name
    with pytest.raises(DistillError, match=r"config\.lr: checkpoint 0\.002, now 0\.001"):
        distill(
            resumed,
            teacher,
            data,
            cfg.model_copy(update={"lr": 1e-3}),
            checkpoint_dir=legacy.parent,
            resume=True,
        )
