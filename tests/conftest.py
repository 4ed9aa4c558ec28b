"""Suite-wide settings: offline Hugging Face, no telemetry, the shared-data and tiny-teacher fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")

from moe2dense_core.shared_data import ENV_VAR, shared_data_dir  # noqa: E402
from tests.flows.tiny_teacher import TinyTeacher, make_tiny_teacher  # noqa: E402

# Session fixtures starting real Prefect, MLflow and S3 (moto) servers, shared by every test folder.
pytest_plugins = ("tests.integration.servers",)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> TinyTeacher:
    """A tiny trained MoE teacher (tests/flows/tiny_teacher.py), once per session for tests/flows and tests/ui."""
    return make_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The third-party data folder; skips the test with the reason when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set {ENV_VAR} to point at it)")
    return path


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test leaves os.environ as it found it: the CLI applies its settings to the environment
    (Settings.apply_environment, as a real process start does), and MLflow's set_tracking_uri exports
    MLFLOW_TRACKING_URI, which the settings honour, so one test's servers must not leak into the next."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
