"""Register the deployments: `convert` and `sweep` startable from the Prefect UI, `watch` on a cron schedule.

    convert/default   work pool `work_pool` (a local process pool by default) or `gpu_pool` when given;
                      its one parameter `recipe: Recipe` renders in the UI as a validated form
    sweep/default     the same pool; one parameter `sweep: SweepRecipe`
    teacher/default   the work pool; one parameter `recipe: TeacherRecipe`
    watch/scheduled   the work pool, on `watch_cron`, with the given WatchConfig

A missing work pool is created as a `process` pool (the team stack creates its GPU pool itself:
infra/). Start a worker with `prefect worker start --pool <pool>` in the project folder.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from flows.convert import convert_flow
from flows.sweep import sweep_flow
from flows.teacher import teacher_flow
from flows.watch import WatchConfig, watch_flow

DEFAULT_WORK_POOL = "moe2dense-process"
DEFAULT_WATCH_CRON = "0 */6 * * *"


def ensure_work_pool(name: str) -> None:
    """Create `name` as a process pool unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy_all(
    work_pool: str = DEFAULT_WORK_POOL,
    gpu_pool: str | None = None,
    watch_cron: str | None = DEFAULT_WATCH_CRON,
    watch_config: WatchConfig | None = None,
) -> list[str]:
    """Register every deployment; returns their ids. `watch_cron=None` registers watch without a schedule."""
    compute_pool = gpu_pool or work_pool
    for pool in {work_pool, compute_pool}:
        ensure_work_pool(pool)
    tags = ["moe2dense"]
    deployments = [
        (convert_flow.to_deployment(name="default", tags=tags), compute_pool),
        (sweep_flow.to_deployment(name="default", tags=tags), compute_pool),
        (teacher_flow.to_deployment(name="default", tags=tags), compute_pool),
        (
            watch_flow.to_deployment(
                name="scheduled",
                tags=tags,
                cron=watch_cron,
                parameters={"config": (watch_config or WatchConfig()).model_dump(mode="json")},
            ),
            work_pool,
        ),
    ]
    return [str(deployment.apply(work_pool_name=pool)) for deployment, pool in deployments]
