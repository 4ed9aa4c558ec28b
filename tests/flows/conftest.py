"""Flow tests: the integration fixtures (real Prefect, MLflow and S3 servers) and a fake model hub."""

from __future__ import annotations

import pytest

from tests.flows.fake_hub import FakeHub
from tests.integration.conftest import mlflow_server, prefect_server, s3_server  # noqa: F401 (fixtures)

RELEASES = {
    "Qwen/Qwen3-30B-A3B": ("a" * 40, "qwen3_moe"),
    "Qwen/Qwen3-8B": ("b" * 40, "qwen3"),  # dense: not an MoE architecture
    "Qwen/Qwen3-MoE-Custom": ("c" * 40, "unknown_moe"),  # unsupported architecture
    "Qwen/Qwen3-235B-A22B": ("d" * 40, "qwen3_moe"),
    "deepseek-ai/DeepSeek-V2-Lite": ("e" * 40, "deepseek_v2"),
    "someone/Mixtral-8x7B-copy": ("f" * 40, "mixtral"),  # organisation not watched
}


@pytest.fixture
def fake_hub():
    with FakeHub(RELEASES) as hub:
        yield hub
