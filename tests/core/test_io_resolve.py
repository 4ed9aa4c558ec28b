"""resolve_model: local folders resolve offline as they are; hub ids go through huggingface_hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moe2dense_core.errors import CheckpointError
from moe2dense_core.io import resolve_model
from moe2dense_core.io.resolve import DEFAULT_ALLOW_PATTERNS


def test_local_folder_is_returned_as_is(tmp_path: Path) -> None:
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model(str(tmp_path)) == tmp_path


def test_local_folder_has_no_revision(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no revision"):
        resolve_model(tmp_path, revision="main")


def test_missing_local_path_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such local folder"):
        resolve_model(tmp_path / "absent")


def test_hub_id_offline_and_uncached_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by tests/conftest.py: nothing leaves the machine
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(
        CheckpointError,
        match=r"example-org/absent-moe@v1: cannot resolve from the Hub: the Hub is offline \(HF_HUB_OFFLINE=1\)",
    ):
        resolve_model("example-org/absent-moe", revision="v1", cache_dir=tmp_path)


def test_default_patterns_never_fetch_pickles_or_code() -> None:
    assert not [p for p in DEFAULT_ALLOW_PATTERNS if p.endswith((".bin", ".pt", ".pth", ".py"))]


def test_hub_id_with_the_hub_unreachable_names_the_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online mode, but the Hub endpoint refuses connections (a closed local port): no network is used."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(
        CheckpointError,
        match=r"example-org/absent-moe@main: cannot resolve from the Hub: the Hub \(http://127\.0\.0\.1:9\) is "
        r"unreachable \(no network\?\) and this revision is not in the local cache",
    ):
        resolve_model("example-org/absent-moe", cache_dir=tmp_path)
