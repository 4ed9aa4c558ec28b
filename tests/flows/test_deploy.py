"""`deploy_all` against the real Prefect server: pools and their templates, the schedule, the recipe form,
code from the installed package (never the deployer's folder) and absolute paths in every parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.deploy import DEFAULT_WORK_POOL, deploy_all
from flows.work_pools import IMAGE_HOME, base_job_template


def read_deployments(ids: list[str]) -> dict:
    with get_client(sync_client=True) as client:
        return {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d
            for d in (client.read_deployment(i) for i in ids)
        }


def read_pool(name: str):
    with get_client(sync_client=True) as client:
        return client.read_work_pool(name)


def test_deployments_land_on_their_pools_with_the_watch_schedule_and_the_recipe_form(team_stack):
    ids = deploy_all(gpu_pool="gpu-it", watch_cron="*/30 * * * *")
    assert len(ids) == 5
    deployments = read_deployments(ids)
    assert set(deployments) == {
        "convert/default",
        "sweep/default",
        "compare/default",
        "teacher/default",
        "watch/scheduled",
    }
    assert read_pool(DEFAULT_WORK_POOL).type == "process" and read_pool("gpu-it").type == "process"
    assert deployments["convert/default"].work_pool_name == "gpu-it"
    assert deployments["sweep/default"].work_pool_name == "gpu-it"
    assert deployments["compare/default"].work_pool_name == "gpu-it"
    assert deployments["watch/scheduled"].work_pool_name == DEFAULT_WORK_POOL
    (schedule,) = deployments["watch/scheduled"].schedules
    assert schedule.schedule.cron == "*/30 * * * *"
    # the UI renders the flow's one pydantic parameter as a form: its JSON schema is the Recipe's
    form = deployments["convert/default"].parameter_openapi_schema
    assert form["required"] == ["recipe"]
    recipe_schema = form["definitions"]["Recipe"]
    assert {"source", "calibration", "plan"} <= set(recipe_schema["properties"])
    assert recipe_schema.get("additionalProperties") is False
    compare_form = deployments["compare/default"].parameter_openapi_schema
    assert compare_form["required"] == ["recipe"]
    assert {"source", "twin", "students", "seeds"} <= set(
        compare_form["definitions"]["CompareRecipe"]["properties"]
    )


def test_code_comes_from_the_installed_package_never_from_the_deployers_folder(team_stack):
    """A process worker runs each flow in a fresh temporary folder: a file entrypoint relative to the
    deployer's folder (`flows/convert.py`, path ".") is not there. Module paths import from the package."""
    deployments = read_deployments(deploy_all(watch_cron=None))
    for name, deployment in deployments.items():
        module, _, function = deployment.entrypoint.rpartition(".")
        assert ":" not in deployment.entrypoint and module.startswith("flows."), (name, deployment.entrypoint)
        assert deployment.path is None and not deployment.pull_steps, name
        assert function.endswith("_flow")


def test_every_path_in_a_deployments_parameters_is_absolute(team_stack, tiny_teacher, tmp_path, monkeypatch):
    """The demo recipe's relative `source.model` and a relative calibration file are resolved against the
    deployer's folder; the teacher's output folder is the process worker's home."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teachers").symlink_to(tiny_teacher.path.parent)
    (tmp_path / "text.txt").symlink_to(tiny_teacher.text)
    recipe = tiny_teacher.recipe(
        f"source.model=./teachers/{tiny_teacher.path.name}",
        "calibration.data={source: files, paths: [text.txt]}",
        "storage.export_dir=exported",
    )
    ids = deploy_all(watch_cron=None, recipe=recipe, process_home=Path("state"))
    parameters = {name: d.parameters for name, d in read_deployments(ids).items()}
    default_recipe = parameters["convert/default"]["recipe"]
    assert default_recipe["source"]["model"] == str(tmp_path.resolve() / "teachers" / tiny_teacher.path.name)
    assert default_recipe["calibration"]["data"]["paths"] == [str(tmp_path.resolve() / "text.txt")]
    assert default_recipe["storage"]["export_dir"] == str(tmp_path.resolve() / "exported")
    assert default_recipe["distillation"]["data"]["paths"] == [str(tiny_teacher.text)]  # already absolute
    assert parameters["teacher/default"]["recipe"]["output_dir"] == str(
        tmp_path.resolve() / "state" / "teachers"
    )


@pytest.mark.parametrize("pool_type", ["kubernetes", "docker"])
def test_gpu_pools_get_the_projects_job_template_and_container_paths(team_stack, pool_type):
    """The server accepts the template (its validator runs on creation); deployments carry the image."""
    pool = f"{pool_type}-gpu-it"
    image = f"registry.team/moe2dense-worker:{pool_type}"
    deployments = read_deployments(
        deploy_all(gpu_pool=pool, gpu_pool_type=pool_type, watch_cron=None, image=image)
    )
    created = read_pool(pool)
    assert created.type == pool_type and created.base_job_template == base_job_template(pool_type)
    assert deployments["convert/default"].job_variables == {"image": image}
    assert deployments["watch/scheduled"].job_variables == {}  # watch stays on the process pool
    assert deployments["teacher/default"].parameters["recipe"]["output_dir"] == str(IMAGE_HOME / "teachers")
    with pytest.raises(ValueError, match=f"{pool!r} exists with type {pool_type!r}, not 'process'"):
        deploy_all(work_pool=pool, watch_cron=None)
