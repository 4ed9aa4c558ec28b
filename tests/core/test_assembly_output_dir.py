"""The output folder: refused before work when unusable; published whole or not at all."""

from __future__ import annotations

import pytest

from moe2dense_core.assembly.output_dir import OutputDirError, check_output_dir, staged_output_dir


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
