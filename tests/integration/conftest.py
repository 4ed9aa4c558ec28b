"""Fixtures shared by the integration tests of stage faults."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher folder, text file): a tiny random-init MoE (no training: stages up to assemble only need
    its weights) and a short English text for calibration."""
    from tests.flows.tiny_teacher import make_random_teacher

    teacher = make_random_teacher(tmp_path_factory.mktemp("random_teacher"), 600)
    return teacher.path, teacher.text
