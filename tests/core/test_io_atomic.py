"""atomic_path / atomic_write_text: the target holds the old content or the whole new one, never a part."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe2dense_core.io.atomic import atomic_path, atomic_write_text


def test_success_replaces_the_target_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "stats.json"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_failure_keeps_the_old_target_and_deletes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_failure_without_a_previous_target_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "index.json"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
