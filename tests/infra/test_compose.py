"""infra/compose.yaml checked without a Docker engine: Docker Compose's own `config` accepts it, and its
variables, images, ports, volumes, start order, commands and every service's environment agree with
infra/.env.example, the worker image, the job templates and the settings the code reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
from urllib.parse import urlparse

import mlflow.cli
import mlflow.environment_variables
import prefect.settings
import pytest

from flows.work_pools import base_job_template
from moe2dense_platform.settings import ENV_PREFIX, Settings
from tests.infra.commands import assert_real_command
from tests.infra.stack_files import (
    COMPOSE,
    CPU_IMAGE,
    ENV_EXAMPLE,
    HUGGINGFACE_VARIABLES,
    IMAGE,
    compose_model,
    compose_variables,
    env_example,
    program,
    settings_variables,
)

PINNED = re.compile(r"^[\w.\-/]+:(?P<tag>[\w.\-]+)@sha256:[0-9a-f]{64}$")
IMAGE_VARIABLES = {  # documented by those images; nothing in this project reads them
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "quay.io/minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
}


@pytest.fixture(scope="module")
def stack() -> dict:
    return compose_model()


def mlflow_variables() -> set[str]:
    """Every variable MLflow reads: mlflow.environment_variables and the `mlflow server` options' envvars."""
    names = {getattr(value, "name", None) for value in vars(mlflow.environment_variables).values()}
    names |= {
        param.envvar for param in mlflow.cli.cli.commands["server"].params if isinstance(param.envvar, str)
    }
    return {name for name in names if isinstance(name, str) and name.startswith("MLFLOW_")}


def listen_port(service: dict, option: str = "--port") -> int:
    command = service["command"]
    return int(command[command.index(option) + 1])


def test_docker_compose_resolves_the_file_as_these_tests_read_it(stack: dict, tmp_path) -> None:
    compose = program("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (scripts/test.sh installs Docker's release binary)")
    run = subprocess.run(  # only .env.example: a variable of the caller's shell would win over it
        [
            str(compose),
            "-f",
            str(COMPOSE),
            "--env-file",
            str(ENV_EXAMPLE),
            "--profile",
            "gpu",
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    resolved = json.loads(run.stdout)
    assert resolved["name"] == "moe2dense"
    assert set(resolved["services"]) == set(stack["services"])
    for name, service in stack["services"].items():
        for key in ("image", "command", "environment"):
            assert resolved["services"][name].get(key) == service.get(key), f"{name}.{key}"


def test_env_example_lists_every_variable_compose_reads_and_no_other() -> None:
    documented = env_example()
    assert set(documented) == compose_variables()
    for name, value in documented.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", name):
            assert value == "" or "change-me" in value, f"{name} in {ENV_EXAMPLE.name} is not a placeholder"


def test_secrets_are_required_variables_never_literals() -> None:
    """Every credential in the compose file is a `${VAR:?…}` (compose refuses to start without it) or the
    optional `${HF_TOKEN:-}`; none is written in the file."""
    for line in COMPOSE.read_text(encoding="utf-8").splitlines():
        key, _, value = line.strip().partition(":")
        if re.search(r"PASSWORD|SECRET|TOKEN", key) and not key.startswith("#"):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}|\$\{HF_TOKEN:-\}", value.strip()), line


def test_images_are_pinned_and_the_built_ones_are_the_templates_tags(stack: dict) -> None:
    for name, service in stack["services"].items():
        if "build" in service:
            variant = service["build"]["args"]["VARIANT"]
            assert service["image"] == {"gpu": IMAGE, "cpu": CPU_IMAGE}[variant], name
        else:
            pinned = PINNED.match(service["image"])
            assert pinned and pinned["tag"] != "latest", (
                f"{name}: {service['image']} is not pinned by tag and digest"
            )
    assert base_job_template("docker")["variables"]["properties"]["image"]["default"] == IMAGE
    assert stack["services"]["worker-gpu"]["image"] == IMAGE


def test_published_ports_are_unique_bound_to_one_address_and_are_the_servers_ports(stack: dict) -> None:
    published = []
    for service in stack["services"].values():
        for port in service.get("ports", []):
            address, host, container = port.rsplit(":", 2)
            assert address == env_example()["STACK_BIND_ADDRESS"] and host == container
            published.append(int(host))
    assert len(published) == len(set(published))
    services = stack["services"]
    assert f"127.0.0.1:{listen_port(services['prefect-server'])}:4200" in services["prefect-server"]["ports"]
    assert f"127.0.0.1:{listen_port(services['mlflow'])}:5000" in services["mlflow"]["ports"]


def test_named_volumes_are_declared_and_shared_with_the_docker_pool(stack: dict) -> None:
    used = {
        mount.split(":")[0] for service in stack["services"].values() for mount in service.get("volumes", [])
    }
    assert used == set(stack["volumes"])  # each named volume declared, each declared one used
    template_volumes = base_job_template("docker")["variables"]["properties"]["volumes"]["default"]
    assert f"{stack['volumes']['worker-data']['name']}:/data" in template_volumes
    template_networks = base_job_template("docker")["variables"]["properties"]["networks"]["default"]
    assert template_networks == [stack["networks"]["default"]["name"]]


def test_services_start_after_what_they_need_is_healthy(stack: dict) -> None:
    services = stack["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency}, which has no healthcheck"
                )
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"])
    assert services["worker-gpu"]["profiles"] == ["gpu"] and "profiles" not in services["worker-cpu"]


def test_commands_run_with_the_worker_image_are_real_commands_of_its_pinned_programs(stack: dict) -> None:
    for service in stack["services"].values():
        if "build" in service:
            assert_real_command(service["command"])


def test_every_environment_variable_is_one_its_program_reads(stack: dict) -> None:
    ours = settings_variables()
    for name, service in stack["services"].items():
        for variable in service.get("environment", {}):
            if "build" not in service:
                assert variable in IMAGE_VARIABLES[service["image"].split(":")[0]], f"{name}: {variable}"
            elif name.startswith("worker-"):  # configured by moe2dense's settings only
                assert variable in ours | HUGGINGFACE_VARIABLES, (
                    f"{name}: {variable} is not read by moe2dense_platform/settings.py"
                )
            elif variable.startswith("PREFECT_"):
                assert hasattr(prefect.settings, variable), f"{name}: {variable} is not a Prefect setting"
            elif variable.startswith("MLFLOW_"):
                assert variable in mlflow_variables(), f"{name}: {variable} is not read by MLflow"
            else:
                assert variable in ours, f"{name}: {variable}"  # AWS_*: boto3's standard variables


def settings_in(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path) -> Settings:
    """The settings a process gets from exactly this environment (no Prefect profile, no caller's variables)."""
    for variable in list(os.environ):
        if variable.startswith(("PREFECT_", "MLFLOW_", "AWS_", ENV_PREFIX)):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    return Settings()


def assert_points_at_the_stack(settings: Settings, stack: dict) -> None:
    services = stack["services"]
    prefect_api, mlflow_uri = urlparse(settings.prefect_api_url), urlparse(settings.mlflow_tracking_uri)
    assert (prefect_api.hostname, prefect_api.port, prefect_api.path) == (
        "prefect-server",
        listen_port(services["prefect-server"]),
        "/api",
    )
    assert (mlflow_uri.hostname, mlflow_uri.port) == ("mlflow", listen_port(services["mlflow"]))
    s3 = urlparse(settings.s3_endpoint_url)
    minio = services["minio"]["command"]
    console = int(minio[minio.index("--console-address") + 1].lstrip(":"))
    assert s3.hostname == "minio" and s3.port in {
        int(p.rsplit(":", 1)[1]) for p in services["minio"]["ports"]
    } - {console}
    bucket = re.search(r"mc mb --ignore-existing stack/(\S+)", services["minio-init"]["entrypoint"][-1])[1]
    artifacts = services["mlflow"]["command"][
        services["mlflow"]["command"].index("--artifacts-destination") + 1
    ]
    assert (
        settings.uses_s3
        and urlparse(settings.resolved_artifact_root).hostname == bucket == urlparse(artifacts).hostname
    )


def test_workers_settings_resolve_to_the_stack_services(
    stack: dict, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    credentials = (env_example()["MINIO_ROOT_USER"], env_example()["MINIO_ROOT_PASSWORD"])
    for name in ("worker-cpu", "worker-gpu"):
        settings = settings_in(stack["services"][name]["environment"], monkeypatch, tmp_path)
        assert_points_at_the_stack(settings, stack)
        keys = (
            settings.aws_access_key_id.get_secret_value(),
            settings.aws_secret_access_key.get_secret_value(),
        )
        assert keys == credentials, name


def test_docker_pool_flow_runs_resolve_to_the_stack_services(
    stack: dict, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A Docker work pool's flow-run container (infra/prefect/docker-job-template.json) joins the stack's
    network: its environment must name the stack's services, the Prefect API included (the worker's own
    URL, http://localhost:4200/api on the host, is not reachable from a container)."""
    environment = base_job_template("docker")["variables"]["properties"]["env"]["default"]
    assert_points_at_the_stack(settings_in(environment, monkeypatch, tmp_path), stack)
