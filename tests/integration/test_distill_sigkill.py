"""SIGKILL during distillation: running the stages again resumes from the newest checkpoint and ends with
the same distilled weights, bit for bit, as a run that was never interrupted (CPU, fp32, one thread).

Each run is a child process (`run_stages`) calling the stage tasks' own code (`.fn`, as the convert
flow calls them: source → calibrate → plan → assemble → distill) under an MLflow parent run, in the
embedded default (no servers) at its own home. The interrupted run is SIGKILLed as soon as its first
checkpoint is complete under `<home>/distill-checkpoints/`; the re-run in the same home must start at
that checkpoint's step. The uninterrupted reference runs at the same time in another home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill.checkpointing import checkpoint_step, latest_checkpoint
from tests.fixtures.tiny_moe import build_tiny_moe
from tests.flows.tiny_teacher import TinyTeacher, animal_paragraphs

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS, EVERY = 30, 3
OVERRIDES = (
    f"distillation.train.max_steps={MAX_STEPS}",
    f"distillation.train.checkpoint_every={EVERY}",
    "distillation.train.precision=fp32",
)


def run_stages(home: str, teacher: str, text: str, out: str) -> None:
    """Child process: the stages up to distill at `home`; writes the distill result's JSON to `out`."""
    os.environ["MOE2DENSE_HOME"] = home
    torch.set_num_threads(1)
    from moe2dense_platform.runtime import Runtime
    from moe2dense_platform.tracking import parent_run
    from tasks.assemble import assemble_task
    from tasks.calibrate import calibrate_task
    from tasks.distill import distill_task
    from tasks.plan import plan_task
    from tasks.source import source_task

    recipe = TinyTeacher(Path(teacher), Path(text)).recipe(*OVERRIDES)
    runtime = Runtime.from_environment()
    location = runtime.settings.resolved_mlflow_artifact_location
    with parent_run(runtime.client, recipe, runtime.redactor, artifact_location=location) as parent:
        source = source_task.fn(recipe.source)
        calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent.run_id)
        plan = plan_task.fn(source, calibration, recipe.plan, parent.run_id)
        student = assemble_task.fn(source, plan, recipe.storage, parent.run_id)
        result = distill_task.fn(source, student, recipe.distillation, parent.run_id)
    Path(out).write_text(result.model_dump_json())


def _start(home: Path, teacher: Path, text: Path) -> subprocess.Popen:
    code = (
        "import sys; from tests.integration.test_distill_sigkill import run_stages; run_stages(*sys.argv[1:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(home), str(teacher), str(text), str(home / "result.json")],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(child: subprocess.Popen, home: Path) -> dict:
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr[-4000:]
    return json.loads((home / "result.json").read_text())


def _first_checkpoint(home: Path, child: subprocess.Popen, timeout_s: float = 240.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        for folder in (home / "distill-checkpoints").glob("*"):
            found = latest_checkpoint(folder)
            if found is not None:
                return found
        time.sleep(0.02)
    stderr = child.stderr.read() if child.poll() is not None else ""
    raise AssertionError(f"no checkpoint appeared (child exit code {child.poll()}): {stderr[-4000:]}")


def test_a_killed_distillation_resumes_and_ends_bit_identical(tmp_path: Path) -> None:
    teacher = build_tiny_moe("qwen3_moe", tmp_path / "teacher")
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(600)))
    killed_home, reference_home = tmp_path / "killed", tmp_path / "reference"
    killed_home.mkdir()
    reference_home.mkdir()

    reference = _start(reference_home, teacher, text)
    victim = _start(killed_home, teacher, text)
    checkpoint = _first_checkpoint(killed_home, victim)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL and not (killed_home / "result.json").exists()
    newest = latest_checkpoint(checkpoint.parent)
    killed_at = checkpoint_step(newest)
    assert 0 < killed_at < MAX_STEPS and killed_at % EVERY == 0

    resumed = _finish(_start(killed_home, teacher, text), killed_home)
    straight = _finish(reference, reference_home)
    assert resumed["checkpoint_digest"] == straight["checkpoint_digest"]  # sha256 of the weight files
    assert not checkpoint.parent.exists()  # removed once the distilled model was stored

    from mlflow import MlflowClient

    def start_step(home: Path, run_id: str) -> int:
        return int(
            MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(run_id).data.params["distill.start_step"]
        )

    assert start_step(killed_home, resumed["mlflow_run_id"]) == killed_at
    assert start_step(reference_home, straight["mlflow_run_id"]) == 0
