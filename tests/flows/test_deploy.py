"""`deploy_all` against the real Prefect server: pools, schedule and the recipe form schema."""

from __future__ import annotations

from prefect.client.orchestration import get_client

from flows.deploy import DEFAULT_WORK_POOL, deploy_all


def test_deployments_land_on_their_pools_with_the_watch_schedule_and_the_recipe_form(team_stack):
    ids = deploy_all(gpu_pool="gpu-it", watch_cron="*/30 * * * *")
    assert len(ids) == 4
    with get_client(sync_client=True) as client:
        deployments = {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in (client.read_deployment(i) for i in ids)
        }
        pools = {pool.name: pool.type for pool in client.read_work_pools()}
    assert set(deployments) == {"convert/default", "sweep/default", "teacher/default", "watch/scheduled"}
    assert pools[DEFAULT_WORK_POOL] == "process" and "gpu-it" in pools
    assert deployments["convert/default"].work_pool_name == "gpu-it"
    assert deployments["sweep/default"].work_pool_name == "gpu-it"
    assert deployments["watch/scheduled"].work_pool_name == DEFAULT_WORK_POOL
    (schedule,) = deployments["watch/scheduled"].schedules
    assert schedule.schedule.cron == "*/30 * * * *"
    # the UI renders the flow's one pydantic parameter as a form: its JSON schema is the Recipe's
    form = deployments["convert/default"].parameter_openapi_schema
    assert form["required"] == ["recipe"]
    recipe_schema = form["definitions"]["Recipe"]
    assert {"source", "calibration", "plan"} <= set(recipe_schema["properties"])
    assert recipe_schema.get("additionalProperties") is False
