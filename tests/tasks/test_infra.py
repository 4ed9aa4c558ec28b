"""The team stack's compose file and worker Dockerfile, checked as data (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose.yaml"
ENV_EXAMPLE = ROOT / "infra" / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile.worker"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(:[?-][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_and_their_start_order(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"prefect-db", "prefect-server", "mlflow-db", "minio", "minio-init", "mlflow", "worker"}
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no healthcheck"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "mc mb --ignore-existing stack/moe2dense" in services["minio-init"]["entrypoint"][-1]


def test_mlflow_uses_postgres_and_s3_artifacts(compose: dict) -> None:
    env = compose["services"]["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@mlflow-db:5432/mlflow")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://moe2dense/mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    prefect = compose["services"]["prefect-server"]["environment"]
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")


def test_worker_reserves_gpus_and_is_configured_by_settings_only(compose: dict) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "docker/Dockerfile.worker"}
    assert (COMPOSE.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    env = worker["environment"]
    assert env["MOE2DENSE_ARTIFACT_ROOT"].startswith("s3://moe2dense/")
    assert env["MOE2DENSE_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MOE2DENSE_PREFECT_API_URL"] == env["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_secrets_come_only_from_the_environment(compose: dict) -> None:
    """Every credential-like value is a required ${VAR:?…} or defaulted-empty variable, each documented
    in infra/.env.example; no literal password/secret is written in the compose file."""
    text = COMPOSE.read_text()
    documented = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#")}
    used = {match.group(1) for match in VARIABLE.finditer(text)}
    assert used <= documented, f"undocumented variables: {sorted(used - documented)}"

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if re.search(r"PASSWORD|SECRET|TOKEN", str(key)) and isinstance(value, str):
                    assert VARIABLE.fullmatch(value), f"{path}.{key} is not taken from the environment"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}.{index}")

    walk(compose, "compose")


def test_dockerfile_installs_the_project_and_runs_a_worker() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", text, re.M)
    for package in ("moe2dense_core", "tasks", "flows", "configs"):
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), package
        assert (ROOT / package).is_dir()
    assert '".[orchestration,eval]"' in text and '"torch==${TORCH_VERSION}"' in text
    assert re.search(r"^USER moe2dense$", text, re.M)
    assert text.rstrip().splitlines()[-1].startswith('CMD ["prefect", "worker", "start"')
