"""Suite-wide settings: offline Hugging Face, no telemetry, and the shared-data fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

from moe2dense_core.shared_data import ENV_VAR, shared_data_dir  # noqa: E402

# Session fixtures starting real Prefect, MLflow and S3 (moto) servers, shared by every test folder.
pytest_plugins = ("tests.integration.servers",)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The third-party data folder; skips the test with the reason when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set {ENV_VAR} to point at it)")
    return path
