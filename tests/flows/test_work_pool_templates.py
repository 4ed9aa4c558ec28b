"""The docker and kubernetes base job templates and the Helm values, checked without an engine: they parse,
Prefect's own validator accepts them, every placeholder is a declared variable, every default fits its
schema, and rendering them with Prefect's templating (as a worker does) gives GPU containers and Jobs."""

from __future__ import annotations

import json
import re
from importlib.metadata import version

import docker.types
import jsonschema
import prefect
import pytest
import yaml
from prefect.server.schemas.actions import validate_base_job_template
from prefect.utilities.templating import PlaceholderType, apply_values, find_placeholders

from flows.work_pools import HELM_VALUES, IMAGE_HOME, JOB_TEMPLATES, PROJECT_ROOT, base_job_template

IMAGE = f"moe2dense-worker:{version('moe2dense')}"
# The fields of the workers' job configurations at the pinned Prefect version (prefect_kubernetes.worker.
# KubernetesWorkerJobConfiguration, prefect_docker.worker.DockerWorkerJobConfiguration, both on top of
# prefect.workers.base.BaseJobConfiguration): a misspelt key would be silently ignored by the worker.
BASE_FIELDS = {"command", "env", "labels", "name"}
WORKER_FIELDS = {
    "kubernetes": BASE_FIELDS
    | {
        "annotations",
        "namespace",
        "job_manifest",
        "cluster_config",
        "job_watch_timeout_seconds",
        "pod_watch_timeout_seconds",
        "stream_output",
    },
    "docker": BASE_FIELDS
    | {
        "image",
        "registry_credentials",
        "image_pull_policy",
        "networks",
        "network_mode",
        "auto_remove",
        "volumes",
        "stream_output",
        "mem_limit",
        "memswap_limit",
        "privileged",
        "container_create_kwargs",
    },
}


def render(template: dict, job_variables: dict | None = None) -> dict:
    """The job configuration a worker builds: variable defaults (those not None), overridden by the
    deployment's job variables, applied with Prefect's templating (unset placeholders drop their key)."""
    properties = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in properties.items() if spec.get("default") is not None}
    return apply_values(template["job_configuration"], values | (job_variables or {}))


@pytest.fixture(params=sorted(JOB_TEMPLATES))
def pool_type(request) -> str:
    return request.param


def test_templates_are_valid_for_prefect_and_declare_every_variable_they_use(pool_type: str) -> None:
    template = base_job_template(pool_type)
    assert validate_base_job_template(template) is template  # the server's own check on pool creation
    assert set(template["job_configuration"]) <= WORKER_FIELDS[pool_type]
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used == set(template["variables"]["properties"])  # none undeclared, none unused
    for spec in template["variables"]["properties"].values():
        if "default" in spec:
            jsonschema.validate(spec["default"], spec)  # a default of the wrong shape fails here, named
    defaults = json.dumps({n: s.get("default") for n, s in template["variables"]["properties"].items()})
    references = {p.type for p in find_placeholders(defaults)}
    assert references <= {PlaceholderType.BLOCK_DOCUMENT}  # only Prefect Secret blocks, no literal secret
    assert template["variables"]["properties"]["image"]["default"] == IMAGE  # pinned to this package


def test_kubernetes_jobs_get_gpus_node_selector_tolerations_and_the_settings_secret() -> None:
    template = base_job_template("kubernetes")
    manifest = render(template)["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    # what prefect-kubernetes requires of a manifest (its _get_base_job_manifest)
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job" and container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["envFrom"] == [{"secretRef": {"name": "moe2dense-settings"}}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["data"] == str(IMAGE_HOME.parent) and set(mounts) <= {v["name"] for v in pod["volumes"]}
    assert "cpu" not in container["resources"]["limits"]  # an unset variable leaves no null behind

    tuned = render(
        template,
        {
            "gpu_count": 8,
            "image": "registry.team/moe2dense-worker:9",
            "node_selector": {"gpu": "h100"},
            "tolerations": [],
        },
    )["job_manifest"]["spec"]["template"]["spec"]
    assert tuned["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert tuned["containers"][0]["image"] == "registry.team/moe2dense-worker:9"
    assert tuned["nodeSelector"] == {"gpu": "h100"} and tuned["tolerations"] == []


def test_docker_containers_get_every_gpu_the_data_volume_and_the_stack_network() -> None:
    config = render(base_job_template("docker"))
    (request,) = config["container_create_kwargs"]["device_requests"]
    device = docker.types.DeviceRequest(**request)  # docker-py builds the request the engine receives
    assert (device.driver, device.count, device.capabilities) == ("nvidia", -1, [["gpu"]])
    assert config["image"] == IMAGE
    assert any(volume.endswith(f":{IMAGE_HOME.parent}") for volume in config["volumes"])
    assert config["networks"] == ["moe2dense_default"]  # compose project `moe2dense`: infra/compose.yaml
    assert config["env"]["AWS_SECRET_ACCESS_KEY"].startswith("{{ prefect.blocks.secret.")


def test_the_image_keeps_its_state_where_the_templates_mount_the_data_volume() -> None:
    dockerfile = (PROJECT_ROOT / "docker" / "Dockerfile.worker").read_text()
    assert re.search(rf"MOE2DENSE_HOME={re.escape(str(IMAGE_HOME))}\b", dockerfile)


def test_helm_values_run_a_kubernetes_worker_of_the_pinned_prefect_on_the_team_server() -> None:
    values = yaml.safe_load(HELM_VALUES.read_text())["worker"]
    assert values["config"]["type"] == "kubernetes"
    assert values["config"]["workPool"] == "moe2dense-kubernetes"
    assert values["image"]["prefectTag"].startswith(f"{prefect.__version__}-")
    assert values["apiConfig"] == "selfHostedServer"
    assert values["selfHostedServerApiConfig"]["apiUrl"].endswith("/api")
    # the template comes from the one JSON file, given with --set-file (the header's command)
    assert values["config"]["baseJobTemplate"]["configuration"] is None
    command = re.search(
        r"--set-file worker\.config\.baseJobTemplate\.configuration=(\S+)", HELM_VALUES.read_text()
    )
    assert command and (PROJECT_ROOT / command.group(1)) == JOB_TEMPLATES["kubernetes"]
