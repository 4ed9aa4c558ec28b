"""The disk fills between two checkpoints: the failed write raises one error naming the checkpoint folder,
leaves the previous checkpoint byte for byte as it was (and no temporary files), and that checkpoint
resumes to the same weights as a run that never failed.

Two ways to fill the disk, each in a child process (its `fill_disk_run`), after the step-2 checkpoint:
  tmpfs   the checkpoint folder is a tmpfs (needs root and a sandbox that allows mount), remounted to
          its used size + 16 KiB: writes fail with ENOSPC, a real full disk;
  rlimit  RLIMIT_FSIZE lowered to 1 KiB with SIGXFSZ ignored: writes fail with EFBIG (anywhere).
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import DistillConfig, DistillError, distill
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = DistillConfig(
    max_steps=6, micro_batch_size=4, lr=2e-3, warmup_steps=1, precision="fp32", checkpoint_every=2, seed=4
)
FILL_AT_STEP = 3  # after the step-2 checkpoint, before the step-4 one


def _inputs() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    teacher = tiny_teacher(seed=1)
    return teacher, dense_student_from_teacher(teacher), random_rows(8, 16, seed=2)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _remount(folder: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


class _FillDiskAt:
    """A MetricLogger that records the checkpoints' digests, then fills the disk, at FILL_AT_STEP."""

    def __init__(self, folder: Path, how: str, record: Path) -> None:
        self.folder, self.how, self.record = folder, how, record

    def log_params(self, params: dict) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if step != FILL_AT_STEP:
            return
        self.record.write_text(json.dumps(_digests(self.folder)))
        if self.how == "tmpfs":
            _remount(self.folder, shutil.disk_usage(self.folder).used + 16 * 1024)
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    def log_artifact(self, path, artifact_path=None) -> None:
        return None


def fill_disk_run(folder: str, how: str, record: str, threads: int) -> None:
    """Child process: distill with checkpoints in `folder` until the disk fills; print the error."""
    torch.set_num_threads(threads)
    teacher, student, data = _inputs()
    try:
        distill(
            student,
            teacher,
            data,
            CONFIG,
            checkpoint_dir=folder,
            logger=_FillDiskAt(Path(folder), how, Path(record)),
        )
    except DistillError as err:
        print(f"DistillError: {err}")
        return
    raise SystemExit("the checkpoint write did not fail")


@pytest.fixture(params=["tmpfs", "rlimit"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "disk"
    folder.mkdir()
    if request.param == "tmpfs":
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        try:
            yield request.param, folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        yield request.param, folder


def test_a_full_disk_keeps_the_previous_checkpoint_resumable(disk: tuple[str, Path], tmp_path: Path) -> None:
    how, folder = disk
    record = tmp_path / "before.json"
    threads = torch.get_num_threads()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tests.core.test_distill_disk_full import fill_disk_run; "
            "fill_disk_run(*sys.argv[1:4], int(sys.argv[4]))",
            str(folder),
            how,
            str(record),
            str(threads),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    message = child.stdout.strip().splitlines()[-1]
    assert f"could not write checkpoint step_00000004 into {folder}" in message
    assert "the newest complete checkpoint step_00000002 is unchanged" in message
    assert _digests(folder) == json.loads(record.read_text())  # step 2 as it was, no temporary left
    assert [p.name for p in folder.iterdir()] == ["step_00000002"]

    if how == "tmpfs":
        _remount(folder, 64 * 2**20)  # space freed: the run goes on
    teacher, resumed, data = _inputs()
    result = distill(resumed, teacher, data, CONFIG, checkpoint_dir=folder, resume=True)
    assert (result.start_step, result.steps) == (2, 6)
    teacher, straight, data = _inputs()
    distill(straight, teacher, data, CONFIG, checkpoint_dir=tmp_path / "straight")
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
