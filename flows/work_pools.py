"""Work pools of the deployments and their base job templates.

    process     `moe2dense worker --pool P` anywhere moe2dense is installed and the settings name the
                server; Prefect's own process template (each flow run in a temporary folder)
    docker      containers of the worker image (docker/) with every NVIDIA GPU, on the compose
                project's network: infra/prefect/docker-job-template.json
    kubernetes  Jobs of the worker image on GPU nodes (nvidia.com/gpu limit, node selector, tolerations,
                settings from a Secret): infra/prefect/kubernetes-job-template.json; the worker itself
                runs from the official Helm chart with infra/helm/prefect-worker-values.yaml

The JSON files are the one source of the docker and kubernetes templates: `ensure_work_pool` sends them
to the server, `prefect work-pool create --base-job-template` and the Helm chart read the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

PoolType = Literal["process", "docker", "kubernetes"]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
JOB_TEMPLATES = {
    "docker": PROJECT_ROOT / "infra" / "prefect" / "docker-job-template.json",
    "kubernetes": PROJECT_ROOT / "infra" / "prefect" / "kubernetes-job-template.json",
}
HELM_VALUES = PROJECT_ROOT / "infra" / "helm" / "prefect-worker-values.yaml"
IMAGE_HOME = Path("/data/moe2dense")
"""MOE2DENSE_HOME inside the worker image (docker/Dockerfile.worker): where container flow runs keep state."""


def base_job_template(pool_type: PoolType) -> dict[str, Any]:
    """The base job template a new pool of this type gets (process: Prefect's own default)."""
    if pool_type == "process":
        return ProcessWorker.get_default_base_job_template()
    return json.loads(JOB_TEMPLATES[pool_type].read_text(encoding="utf-8"))


def ensure_work_pool(name: str, pool_type: PoolType = "process") -> None:
    """Create `name` as a `pool_type` pool with its base job template unless it exists; refuse a pool of
    another type (its workers could not run these deployments as intended). An existing pool keeps its
    template (a platform engineer may have tuned it)."""
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=base_job_template(pool_type))
            )
            return
    if existing.type != pool_type:
        raise ValueError(f"work pool {name!r} exists with type {existing.type!r}, not {pool_type!r}")
