"""Register the deployments: `convert`, `sweep`, `compare`, `teacher` startable from the Prefect UI, `watch` on a
cron.

    convert/default   the compute pool (`gpu_pool` when given, else `work_pool`); one parameter
                      `recipe: Recipe`, rendered by the UI as a validated form (pre-filled when `recipe`
                      is given)
    sweep/default     the compute pool; one parameter `sweep: SweepRecipe`
    compare/default   the compute pool; one parameter `recipe: CompareRecipe` (flows/compare.py)
    teacher/default   the compute pool; one parameter `recipe: TeacherRecipe`, teachers saved under the
                      worker's home
    watch/scheduled   `work_pool`, on `watch_cron`, with the given WatchConfig (whose recipes are
                      absolute paths or stored URIs: flows/watch_config.py)

Where the code comes from. Every entrypoint is a module path (`flows.convert.convert_flow`) with no
storage and no pull steps: a worker imports the flows from the moe2dense package installed where it
runs (`pip install -e .` on a VM, the image from docker/ in a container), whatever its working folder.
The alternatives all bake the deployer's folder into the deployment: `path="."` (a process worker runs
each flow in a fresh temporary folder, so `flows/convert.py` is not found there), a
`set_working_directory` pull step or a `working_dir` job variable (an absolute path of the deployer's
machine, which exists in no container and on no other host).

Work pools (process, docker, kubernetes) are created when missing: flows/work_pools.py.

Paths. A worker runs each flow in a temporary folder, so every local path in a deployment's parameters
is absolute: relative ones are resolved against `path_base` (the deployer's folder, as every CLI command
resolves them), and teachers are saved under the worker's home: `process_home` (the deployer's home) for
a process pool, the image's MOE2DENSE_HOME (`IMAGE_HOME`) for docker and kubernetes pools.
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any

from prefect.deployments.runner import EntrypointType
from pydantic import BaseModel

from flows.compare import compare_flow
from flows.convert import convert_flow
from flows.sweep import sweep_flow
from flows.teacher import TeacherRecipe, teacher_flow
from flows.watch import WatchConfig, watch_flow
from flows.work_pools import IMAGE_HOME, PoolType, ensure_work_pool
from moe2dense_platform.recipe import Recipe, SourceConfig

DEFAULT_WORK_POOL = "moe2dense-process"
DEFAULT_WATCH_CRON = "0 */6 * * *"


def absolute_paths(value: Any, base: Path) -> Any:
    """`value` with every relative local path resolved against `base`: `Path` fields of pydantic models
    (nested, in tuples and lists) and a local `SourceConfig.model`. Hub ids and URIs are left alone."""
    if isinstance(value, Path):
        path = value.expanduser()
        return path if path.is_absolute() else Path(os.path.normpath(base / path))  # symlinks kept
    if isinstance(value, tuple | list):
        return type(value)(absolute_paths(item, base) for item in value)
    if not isinstance(value, BaseModel):
        return value
    updates = {name: absolute_paths(getattr(value, name), base) for name in type(value).model_fields}
    if isinstance(value, SourceConfig) and value.is_local:
        updates["model"] = str(absolute_paths(Path(value.model), base))
    return value.model_copy(update=updates)


def deploy_all(
    work_pool: str = DEFAULT_WORK_POOL,
    gpu_pool: str | None = None,
    gpu_pool_type: PoolType = "process",
    watch_cron: str | None = DEFAULT_WATCH_CRON,
    watch_config: WatchConfig | None = None,
    recipe: Recipe | None = None,
    image: str | None = None,
    path_base: Path | None = None,
    process_home: Path = Path(".moe2dense"),
) -> list[str]:
    """Register every deployment; returns their ids. `watch_cron=None` registers watch without a schedule;
    `recipe` pre-fills convert's form; `image` replaces the template's image on a docker/kubernetes pool."""
    base = (path_base or Path.cwd()).resolve()
    compute_pool, compute_type = (gpu_pool, gpu_pool_type) if gpu_pool else (work_pool, "process")
    ensure_work_pool(work_pool, "process")
    ensure_work_pool(compute_pool, compute_type)
    worker_home = process_home.resolve() if compute_type == "process" else IMAGE_HOME
    compute = {
        "tags": ["moe2dense"],
        "version": version("moe2dense"),
        "entrypoint_type": EntrypointType.MODULE_PATH,
        "job_variables": {"image": image} if image and compute_type != "process" else {},
    }
    teacher_parameters = TeacherRecipe(output_dir=worker_home / "teachers")
    convert_parameters = {"recipe": absolute_paths(recipe, base).model_dump(mode="json")} if recipe else {}
    deployments = [
        (convert_flow.to_deployment(name="default", parameters=convert_parameters, **compute), compute_pool),
        (sweep_flow.to_deployment(name="default", **compute), compute_pool),
        (compare_flow.to_deployment(name="default", **compute), compute_pool),
        (
            teacher_flow.to_deployment(
                name="default", parameters={"recipe": teacher_parameters.model_dump(mode="json")}, **compute
            ),
            compute_pool,
        ),
        (
            watch_flow.to_deployment(
                name="scheduled",
                tags=["moe2dense"],
                version=version("moe2dense"),
                entrypoint_type=EntrypointType.MODULE_PATH,
                cron=watch_cron,
                parameters={"config": (watch_config or WatchConfig()).model_dump(mode="json")},
            ),
            work_pool,
        ),
    ]
    return [str(deployment.apply(work_pool_name=pool)) for deployment, pool in deployments]
