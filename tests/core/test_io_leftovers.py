"""Owner records: a folder is a leftover once its owner process is gone, never while it lives, and one
without a record only after a day without changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from moe2dense_core.io.leftovers import LEGACY_AGE_S, OWNER_FILE, is_leftover, read_owner, write_owner
from moe2dense_core.process_owner import current_owner, process_start_ticks

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OWNING_CHILD = (
    "import sys, time; from pathlib import Path; from moe2dense_core.io.leftovers import write_owner; "
    "write_owner(Path(sys.argv[1])); print('ready', flush=True); time.sleep(600)"
)


def record(folder: Path, **changes) -> None:
    folder.mkdir(exist_ok=True)
    (folder / OWNER_FILE).write_text(json.dumps(asdict(replace(current_owner(), **changes))))


def age(folder: Path, seconds: float) -> None:
    """Set the mtime of `folder` and everything below it to `seconds` ago."""
    stamp = time.time() - seconds
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (stamp, stamp))


def test_the_record_names_this_process(tmp_path):
    write_owner(tmp_path)
    owner = read_owner(tmp_path)
    assert owner == current_owner()
    assert owner.pid == os.getpid() and owner.start_ticks == process_start_ticks(os.getpid()) is not None
    assert not is_leftover(tmp_path)


def test_a_folder_is_kept_while_its_owner_lives_and_is_a_leftover_once_it_is_killed(tmp_path):
    folder = tmp_path / "staging"
    folder.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", OWNING_CHILD, str(folder)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "ready\n"
    assert read_owner(folder).pid == child.pid
    assert not is_leftover(folder)
    os.kill(child.pid, signal.SIGSTOP)  # a stopped process still lives
    assert not is_leftover(folder)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert is_leftover(folder)


def test_a_reused_pid_does_not_keep_a_leftover_alive(tmp_path):
    record(tmp_path / "reused", start_ticks=process_start_ticks(os.getpid()) - 1)  # our pid, another start
    assert is_leftover(tmp_path / "reused")


def test_a_record_from_another_machine_or_boot_is_never_a_leftover_here(tmp_path):
    gone_pid = 2**22 + 7  # above the default pid_max: no such process
    record(tmp_path / "other-host", host="elsewhere", pid=gone_pid)
    record(tmp_path / "other-boot", boot_id="another-boot", pid=gone_pid)
    record(tmp_path / "gone-here", pid=gone_pid)
    for name in ("other-host", "other-boot"):
        age(tmp_path / name, 10 * LEGACY_AGE_S)
        assert not is_leftover(tmp_path / name)
    assert is_leftover(tmp_path / "gone-here")


def test_a_folder_without_a_record_is_a_leftover_after_a_day_without_changes(tmp_path):
    legacy = tmp_path / "legacy"
    (legacy / "sub").mkdir(parents=True)
    (legacy / "sub" / "model.safetensors").write_bytes(b"\0" * 8)
    age(legacy, LEGACY_AGE_S - 60)
    assert not is_leftover(legacy)
    age(legacy, LEGACY_AGE_S + 60)
    assert is_leftover(legacy)
    (legacy / "sub" / "model.safetensors").write_bytes(b"\1" * 8)  # a writer still at work deep inside
    assert not is_leftover(legacy)
