"""The output folder: refused before work when unusable; published whole or not at all; what a killed
assembly leaves beside it is restored or removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moe2dense_core.assembly.output_dir import OutputDirError, check_output_dir, staged_output_dir
from moe2dense_core.io.leftovers import LEGACY_AGE_S, OWNER_FILE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A real assembly publisher, SIGKILLed by the test at one moment: `staging` (new files half-written) or
# `swap` (right after the old out_dir was moved aside, before the new one took its place).
ASSEMBLING_CHILD = """
import os, sys, time
from pathlib import Path
from moe2dense_core.assembly.output_dir import staged_output_dir
out, moment = Path(sys.argv[1]), sys.argv[2]
move = os.replace
def replace_then_wait(source, target):
    move(source, target)
    if Path(source) == out:
        print("ready", flush=True)
        time.sleep(600)
os.replace = replace_then_wait
with staged_output_dir(out) as staging:
    (staging / "new.txt").write_text("new")
    if moment == "staging":
        print("ready", flush=True)
        time.sleep(600)
"""


def test_a_missing_or_empty_folder_is_accepted(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    assert check_output_dir(tmp_path / "new", overwrite=False, source_dir=teacher) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", overwrite=False, source_dir=teacher) == tmp_path / "empty"


def test_a_non_empty_folder_needs_overwrite(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(OutputDirError, match="exists and is not empty; pass overwrite=True"):
        check_output_dir(out, overwrite=False, source_dir=teacher)
    assert check_output_dir(out, overwrite=True, source_dir=teacher) == out


@pytest.mark.parametrize("relative", [".", "sub", ".."], ids=["same", "inside", "containing"])
def test_the_teacher_folder_is_never_an_output(tmp_path, relative):
    teacher = tmp_path / "models" / "teacher"
    teacher.mkdir(parents=True)
    with pytest.raises(OutputDirError, match="overlaps the teacher checkpoint folder"):
        check_output_dir(teacher / relative, overwrite=True, source_dir=teacher)


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "file", overwrite=True, source_dir=tmp_path / "teacher")


def test_success_replaces_the_previous_folder_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_output_dir(out) as staging:
        assert not (out / "new.txt").exists()
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_keeps_the_previous_folder_untouched_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), staged_output_dir(out) as staging:
        (staging / "half.safetensors").write_bytes(b"\0" * 10)
        raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert (out / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_without_a_previous_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), staged_output_dir(tmp_path / "out") as staging:
        (staging / "half.safetensors").write_bytes(b"\0")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def start_assembly(out: Path, moment: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", ASSEMBLING_CHILD, str(out), moment],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if child.stdout.readline() != "ready\n":
        child.kill()
        pytest.fail(f"the assembling child never reached {moment!r}: {child.stderr.read()[-4000:]}")
    return child


def sigkill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)


def beside(out: Path) -> list[str]:
    return sorted(path.name.split("-")[0] for path in out.parent.iterdir() if path != out)


def old_output(tmp_path: Path) -> tuple[Path, Path]:
    teacher, out = tmp_path / "teacher", tmp_path / "out"
    teacher.mkdir()
    out.mkdir()
    (out / "old.txt").write_text("old")
    return teacher, out


def test_a_killed_assembly_leaves_staging_kept_while_it_lives_and_removed_by_the_next_run(tmp_path):
    teacher, out = old_output(tmp_path)
    child = start_assembly(out, "staging")
    check_output_dir(out, overwrite=True, source_dir=teacher)  # a second run while the first one lives
    assert beside(out) == [".out.staging", "teacher"]
    sigkill(child)
    assert beside(out) == [".out.staging", "teacher"]

    assert check_output_dir(out, overwrite=True, source_dir=teacher) == out
    assert beside(out) == ["teacher"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_an_assembly_killed_between_its_renames_gets_the_old_output_back(tmp_path):
    teacher, out = old_output(tmp_path)
    sigkill(start_assembly(out, "swap"))
    assert not out.exists()  # the old output only lies in the .previous- folder now
    assert beside(out) == [".out.previous", ".out.staging", "teacher"]

    with pytest.raises(OutputDirError, match="exists and is not empty"):  # restored, so still protected
        check_output_dir(out, overwrite=False, source_dir=teacher)
    assert (out / "old.txt").read_text() == "old" and [p.name for p in out.iterdir()] == ["old.txt"]
    assert beside(out) == ["teacher"]
    with staged_output_dir(check_output_dir(out, overwrite=True, source_dir=teacher)) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and beside(out) == ["teacher"]


def test_folders_of_older_versions_go_after_a_day_and_a_previous_one_is_restored_first(tmp_path):
    teacher, out = tmp_path / "teacher", tmp_path / "out"
    teacher.mkdir()
    (tmp_path / ".out.staging-young").mkdir()  # no owner record: what older versions wrote
    (tmp_path / ".out.staging-old").mkdir()
    (tmp_path / ".out.previous-old" / "out").mkdir(parents=True)
    (tmp_path / ".out.previous-old" / "out" / "old.txt").write_text("old")
    stamp = time.time() - LEGACY_AGE_S - 60
    for path in (
        ".out.staging-old",
        ".out.previous-old",
        ".out.previous-old/out",
        ".out.previous-old/out/old.txt",
    ):
        os.utime(tmp_path / path, (stamp, stamp))

    check_output_dir(out, overwrite=True, source_dir=teacher)
    assert (out / "old.txt").read_text() == "old"
    assert beside(out) == [".out.staging", "teacher"]
    assert (tmp_path / ".out.staging-young").is_dir()


def test_the_owner_record_name_is_not_an_output_folder(tmp_path):
    with pytest.raises(OutputDirError, match="reserved"):
        check_output_dir(tmp_path / OWNER_FILE, overwrite=True, source_dir=tmp_path / "teacher")
