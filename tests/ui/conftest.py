"""The UI tests' world: `moe2dense stack up` (Prefect server, MLflow server, moto S3, a process worker) on
free ports of 127.0.0.1, one tiny `moe2dense convert` run from the command line against it, the
deployments registered with `moe2dense deploy --recipe` (so convert's form is pre-filled), and a headless
Chromium. One stack per module; the stack is taken down afterwards. A test that fails leaves a
screenshot of the page it was on: `test-artifacts/ui/<test>-failure.png`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from moe2dense_platform.local_stack import LocalStack, StackConfig, isolated_environment
from moe2dense_platform.processes import free_port, http_json
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.recipe_io import recipe_to_yaml
from tests.integration.servers import BIN
from tests.ui.browser import ARTIFACTS, screenshot, start_chromium


@dataclass(frozen=True)
class CliRun:
    """The Prefect flow run of the `moe2dense convert` the fixture ran."""

    id: str
    name: str


@dataclass(frozen=True)
class UiStack:
    config: StackConfig
    recipe: Recipe
    cli_run: CliRun

    @property
    def prefect_ui(self) -> str:
        return self.config.prefect_api_url.removesuffix("/api")

    @property
    def mlflow_ui(self) -> str:
        return self.config.mlflow_url


def moe2dense(*args: str, env: dict[str, str], cwd: Path) -> None:
    """Run the CLI as a user does; a failure fails the test with its output."""
    result = subprocess.run(
        [str(BIN / "moe2dense"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"moe2dense {' '.join(args)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )


@pytest.fixture(scope="module")
def ui_stack(tiny_teacher, tmp_path_factory) -> Iterator[UiStack]:
    home = tmp_path_factory.mktemp("ui_home")
    config = StackConfig(prefect_port=free_port(), mlflow_port=free_port(), s3_port=free_port())
    stack = LocalStack(home / "stack")
    try:
        stack.up(config)
        recipe = tiny_teacher.recipe("name=ui-tiny", "tracking.registered_model=ui-dense")
        recipe_file = home / "recipe.yaml"
        recipe_file.write_text(recipe_to_yaml(recipe))
        env = isolated_environment(MOE2DENSE_SETTINGS_FILE=str(stack.settings_file), MOE2DENSE_HOME=str(home))
        moe2dense("convert", str(recipe_file), env=env, cwd=home)
        (run,) = http_json(f"{config.prefect_api_url}/flow_runs/filter", {})
        moe2dense("deploy", "--work-pool", config.work_pool, "--recipe", str(recipe_file), env=env, cwd=home)
        yield UiStack(config, recipe, CliRun(run["id"], run["name"]))
    finally:
        stack.down()


@pytest.fixture(scope="module")
def chromium():
    driver = start_chromium(ARTIFACTS / "chromedriver.log")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.ui_failed = report.failed
    return report


@pytest.fixture
def browser(chromium, request):
    """The module's Chromium; when the test fails, a screenshot of where it stopped."""
    yield chromium
    if getattr(request.node, "ui_failed", False):
        screenshot(chromium, f"{request.node.name}-failure")
