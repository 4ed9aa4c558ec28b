"""Fixtures shared by the integration tests of stage faults."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher folder, text file): a tiny random-init MoE (no training: stages up to assemble only need
    its weights) and a short English text for calibration."""
    from tests.fixtures.tiny_moe import build_tiny_moe
    from tests.flows.tiny_teacher import animal_paragraphs

    root = tmp_path_factory.mktemp("random_teacher")
    text = root / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(600)))
    return build_tiny_moe("qwen3_moe", root / "teacher"), text
