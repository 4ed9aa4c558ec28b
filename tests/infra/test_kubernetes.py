"""The Kubernetes side checked without a cluster: the manifests a cluster receives (the watch worker's
Deployment, a flow-run Job rendered from the base job template) are valid against Kubernetes' own
OpenAPI schemas (kubernetes-validate, strict: an unknown or misplaced field fails), and the watch worker
agrees with the job template, the Helm values and the deployments."""

from __future__ import annotations

import pytest
import yaml
from prefect.utilities.templating import apply_values

from flows.deploy import DEFAULT_WORK_POOL
from flows.work_pools import HELM_VALUES, base_job_template
from tests.infra.commands import assert_real_command
from tests.infra.stack_files import CPU_IMAGE, WATCH_WORKER

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="the dev extra installs kubernetes-validate"
)
KUBERNETES_VERSION = "1.33"


def rendered_job() -> dict:
    """The Job a Kubernetes worker submits for a flow run, from the template's defaults. prefect-kubernetes
    wants `parallelism` and `completions` in the pod spec of its templates (its own default template has
    them there) and the API server drops them; the worker adds `args` and `env` as lists."""
    template = base_job_template("kubernetes")
    defaults = {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if spec.get("default") is not None
    }
    manifest = apply_values(template["job_configuration"], defaults | {"name": "flow-run"})["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    return manifest


@pytest.mark.parametrize(
    "manifest",
    [yaml.safe_load(WATCH_WORKER.read_text(encoding="utf-8")), rendered_job()],
    ids=["watch-worker", "flow-run-job"],
)
def test_manifests_are_valid_kubernetes_objects(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="misspelt"):  # the check can fail
        kubernetes_validate.validate(
            {**manifest, "spec": {**manifest["spec"], "misspelt": 1}}, KUBERNETES_VERSION, strict=True
        )


def test_watch_worker_polls_the_deployments_process_pool_on_the_helm_workers_server() -> None:
    deployment = yaml.safe_load(WATCH_WORKER.read_text(encoding="utf-8"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    variables = base_job_template("kubernetes")["variables"]["properties"]
    job_pod = base_job_template("kubernetes")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert container["image"] == CPU_IMAGE
    assert deployment["metadata"]["namespace"] == variables["namespace"]["default"]
    assert container["envFrom"] == [{"secretRef": {"name": variables["settings_secret"]["default"]}}]
    assert pod["securityContext"] == job_pod["securityContext"]
    helm = yaml.safe_load(HELM_VALUES.read_text(encoding="utf-8"))["worker"]
    assert {"name": "PREFECT_API_URL", "value": helm["selfHostedServerApiConfig"]["apiUrl"]} in container[
        "env"
    ]
    command = container["command"]
    assert command[command.index("--pool") + 1] == DEFAULT_WORK_POOL
    assert_real_command(command)
