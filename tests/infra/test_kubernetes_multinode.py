"""infra/kubernetes/distill-multinode.yaml, checked without a cluster: rendered as its header says
(envsubst of the listed variables), the headless Service and the indexed Job are valid Kubernetes objects
(kubernetes-validate, strict), pod 0's DNS name, the rendezvous port, the node rank and the variable names
agree with what tasks/distill_nodes.py reads, and every pod's command is a real one that makes the recipe
state the Job's nodes and GPUs."""

from __future__ import annotations

import re
import shlex
from string import Template

import pytest
import yaml

from moe2dense_platform.recipe import RecipeError
from moe2dense_platform.recipe_io import load_recipe
from tasks.distill_nodes import NNODES_ENV, NODE_RANK_ENV, RDZV_ENDPOINT_ENV, RDZV_ID_ENV, NodeGroup
from tests.infra.commands import assert_real_command
from tests.infra.stack_files import IMAGE, ROOT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="the dev extra installs kubernetes-validate"
)
KUBERNETES_VERSION = "1.33"
TEMPLATE = ROOT / "infra" / "kubernetes" / "distill-multinode.yaml"
VALUES = {
    "NAME": "distill-test",
    "IMAGE": f"registry.example.com/ml/{IMAGE}",
    "NNODES": "2",
    "GPUS_PER_NODE": "8",
    "RECIPE": "/opt/moe2dense/configs/demo.yaml",
    "DATA_CLAIM": "moe2dense-shared",
}


def documented_variables() -> list[str]:
    """The variables of the header's `envsubst '$A $B …'` line."""
    (line,) = [line for line in TEMPLATE.read_text(encoding="utf-8").splitlines() if "envsubst '" in line]
    (listed,) = re.findall(r"envsubst '([^']*)'", line)
    return [name.lstrip("$") for name in listed.split()]


def rendered(values: dict[str, str] = VALUES) -> tuple[dict, dict]:
    """(Service, Job) as `envsubst` renders the template with `values` (no other `$` in the manifests)."""
    body = "\n".join(
        line for line in TEMPLATE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")
    )
    assert set(re.findall(r"\$\{?(\w+)", body)) == set(documented_variables())
    service, job = yaml.safe_load_all(Template(body).substitute(values))
    return service, job


@pytest.mark.parametrize("kind", ["Service", "Job"])
def test_the_rendered_manifests_are_valid_kubernetes_objects(kind: str) -> None:
    manifest = {m["kind"]: m for m in rendered()}[kind]
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="misspelt"):  # the check can fail
        kubernetes_validate.validate(
            {**manifest, "spec": {**manifest["spec"], "misspelt": 1}}, KUBERNETES_VERSION, strict=True
        )


def test_pod_0_hosts_the_rendezvous_the_other_pods_find() -> None:
    service, job = rendered()
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(VALUES["NNODES"])
    assert job["spec"]["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == pod["metadata"]["labels"]
    # an indexed Job's pod i is named <job>-<i>; its subdomain makes <job>-<i>.<service> resolvable
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    host, port = env[RDZV_ENDPOINT_ENV]["value"].split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    rank_from = env[NODE_RANK_ENV]["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank_from == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    for rank in range(int(VALUES["NNODES"])):
        values = {name: item["value"] for name, item in env.items() if "value" in item} | {
            NODE_RANK_ENV: str(rank)
        }
        group = NodeGroup.from_environment(values)
        assert (group.nnodes, group.node_rank, group.rdzv_id) == (2, rank, VALUES["NAME"])
        assert group.torchrun_arguments(0)[-1] == f"is_host={int(rank == 0)}"
    assert {NNODES_ENV, RDZV_ID_ENV} <= env.keys()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == VALUES["GPUS_PER_NODE"]


def test_every_pod_runs_a_real_command_that_states_the_jobs_processes() -> None:
    _, job = rendered()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:4] == ["python", "-m", "tasks.distill_nodes", "--"]
    flow = command[4:]
    assert_real_command(flow)
    recipe_path, *overrides = flow[2:]
    recipe = load_recipe(ROOT / recipe_path.removeprefix("/opt/moe2dense/"), overrides)
    assert (recipe.distillation.nnodes, recipe.distillation.nproc_per_node) == (2, 8)
    assert recipe.distillation.world_size == 16


def test_a_paper_recipe_on_more_gpus_is_refused_at_pod_start_naming_the_max_steps_that_fit() -> None:
    _, job = rendered({**VALUES, "RECIPE": "/opt/moe2dense/configs/paper/qwen3_30b_a3b.yaml"})
    (container,) = job["spec"]["template"]["spec"]["containers"]
    recipe_path, *overrides = container["command"][6:]
    with pytest.raises(
        RecipeError, match="token_budget 4,000,000,000 is not within one step.*max_steps 3815 would fit"
    ):
        load_recipe(ROOT / recipe_path.removeprefix("/opt/moe2dense/"), overrides)


def test_the_header_example_renders_every_variable() -> None:
    header = " ".join(
        line.lstrip("# ").rstrip("\\")
        for line in TEMPLATE.read_text(encoding="utf-8").splitlines()
        if line.startswith("#   ") or line.startswith("#     ")
    )
    assignments = dict(
        token.split("=", 1) for token in shlex.split(header.split("envsubst")[0]) if "=" in token
    )
    assert set(assignments) == set(documented_variables())
