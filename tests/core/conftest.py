"""Fixtures shared by the core tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny_moe import FAMILIES, build_tiny_moe


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny MoE checkpoint per supported family (tests/fixtures/tiny_moe.py)."""
    root = tmp_path_factory.mktemp("tiny_moe")
    return {family: build_tiny_moe(family, root / family) for family in FAMILIES}
