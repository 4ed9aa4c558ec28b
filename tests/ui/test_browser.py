"""The Prefect and MLflow UIs of `moe2dense stack up`, driven in headless Chromium as a person uses them.

After one tiny `moe2dense convert` from the command line (tests/ui/conftest.py):
- Prefect UI (its default, the v2 UI): the run is listed Completed, and its Task Runs tab shows every
  stage Completed;
- the `convert` deployment's Run → Custom run form, pre-filled by `moe2dense deploy --recipe`, with the
  recipe's name changed, starts a run that the stack's process worker picks up and completes, with the
  changed value in its parameters;
- MLflow UI: the experiment's parent run, expanded, shows its nested stage runs; the parent run links
  back to the Prefect flow run; the registered model's version shows the lineage tags (source model,
  statistics / plan / checkpoint digests, checkpoint URI, Prefect flow run).
Screenshots of each page land in test-artifacts/ui/ (tests/ui/browser.py).
"""

from __future__ import annotations

import re
import time

import pytest

from moe2dense_platform.local_stack import WORKER_NAME
from moe2dense_platform.tracking import (
    TAG_CHECKPOINT_DIGEST,
    TAG_CHECKPOINT_URI,
    TAG_PLAN_DIGEST,
    TAG_PREFECT_FLOW_RUN,
    TAG_PREFECT_FLOW_RUN_URL,
    TAG_SHARDS_DIGEST,
    TAG_SOURCE_MODEL,
    TAG_STATS_DIGEST,
)
from tests.flows.test_worker_run import STAGES as NESTED_STAGE_RUNS
from tests.ui import browser as ui

MISSING = ui.missing()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

CONVERT_TASKS = {"source", "calibrate", "plan", "assemble", "evaluate", "distill", "report", "register"}
RUN_TIMEOUT_S = 300.0
LINEAGE_DIGESTS = (TAG_STATS_DIGEST, TAG_PLAN_DIGEST, TAG_SHARDS_DIGEST, TAG_CHECKPOINT_DIGEST)
TERMINAL = {"Completed", "Failed", "Crashed", "Cancelled"}
SHA256 = re.compile(r"[0-9a-f]{64}")
STATE_BADGE = "*[@data-slot='badge' and contains(@class, 'bg-state-')]"  # Prefect v2 UI


# ---- Prefect UI -----------------------------------------------------------------------------------
# The UIs re-render lists as their queries refresh, so each read of elements happens inside `ui.wait`
# (retried when an element went stale) and returns plain values.
def state_badge(container) -> str:
    """The state shown by the first state badge in `container` ("Completed", "Running", ...)."""
    from selenium.webdriver.common.by import By

    return container.find_element(By.XPATH, f".//{STATE_BADGE}").text


def card_state(driver, link_xpath: str) -> str | None:
    """The state badge of the card (list row) holding the link, or None while it is not shown."""
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(By.XPATH, f"{link_xpath}/ancestor::*[@data-slot='card'][1]")
    return state_badge(cards[0]) if cards else None


def active_panel(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, "//*[@role='tabpanel' and @data-state='active']")


def open_tab(driver, name: str) -> None:
    """Click the tab `name` of a run page (its id ends in `-trigger-<name without spaces>`, which tells it
    from the runs list's tabs) and wait for its panel."""
    key = name.replace(" ", "")
    ui.click(driver, f"//button[@role='tab' and substring-after(@id, '-trigger-')='{key}']", f"tab {name}")
    ui.element(
        driver,
        f"//*[@role='tabpanel' and @data-state='active' and substring-after(@id, '-content-')='{key}']",
        f"panel of tab {name}",
    )


def task_run_states(driver) -> dict[str, str] | None:
    """{task run name: state} of the Task Runs panel once it lists as many as its count says."""
    from selenium.webdriver.common.by import By

    panel = active_panel(driver)
    count = re.match(r"(\d+) Task runs?\b", panel.text)
    links = panel.find_elements(By.XPATH, ".//a[contains(@href, '/runs/task-run/')]")
    if count is None or not links or len(links) != int(count[1]):
        return None
    return {
        link.text: state_badge(link.find_element(By.XPATH, "./ancestor::*[@data-slot='card'][1]"))
        for link in links
    }


def test_prefect_ui_lists_the_cli_run_with_every_stage_completed(browser, ui_stack):
    run = ui_stack.cli_run
    browser.get(ui_stack.prefect_ui)
    ui.click(browser, "//a[normalize-space()='Runs' and contains(@href, '/runs')]", "Runs in the navigation")
    link = f"//a[normalize-space()='{run.name}' and contains(@href, '/runs/flow-run/{run.id}')]"
    assert (
        ui.wait(browser, lambda: card_state(browser, link), f"flow run {run.name} in the runs list")
        == "Completed"
    )
    ui.screenshot(browser, "prefect-1-runs")

    ui.click(browser, link, f"the link to flow run {run.name}")
    ui.reached(browser, f"/runs/flow-run/{run.id}", f"the page of flow run {run.name}")
    open_tab(browser, "Task Runs")
    shown = ui.wait(browser, lambda: task_run_states(browser), "every task run of the flow run")
    assert {name.rsplit("-", 1)[0] for name in shown} == CONVERT_TASKS, shown
    assert set(shown.values()) == {"Completed"}, shown
    ui.screenshot(browser, "prefect-2-task-runs")


def field(driver, label: str):
    """The input of the first form field labelled `label` (top-level fields come first in the form)."""
    from selenium.webdriver.common.by import By

    label_element = ui.element(driver, f"(//label[normalize-space()='{label}'])[1]", f"form field {label!r}")
    return driver.find_element(By.ID, label_element.get_attribute("for"))


def replace_text(input_element, value: str) -> None:
    """Select the field's text and type `value` over it (keystrokes, so the form's state sees them)."""
    from selenium.webdriver.common.keys import Keys

    input_element.send_keys(Keys.CONTROL, "a")
    input_element.send_keys(value)
    assert input_element.get_attribute("value") == value


def wait_for_final_state(driver, run_name: str) -> str:
    """Reload the run page until its state badge is final (at most RUN_TIMEOUT_S); returns the state."""
    from selenium.webdriver.common.by import By

    header = f"//*[normalize-space(text())='{run_name}']/ancestor::*[.//{STATE_BADGE}][1]"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        state = ui.wait(
            driver, lambda: state_badge(driver.find_element(By.XPATH, header)), f"state of run {run_name}"
        )
        if state in TERMINAL or time.monotonic() > deadline:
            return state
        time.sleep(3)
        driver.refresh()


def test_a_custom_run_from_the_deployment_form_completes_on_the_worker(browser, ui_stack):
    run_name, recipe_name = "ui-custom-run", "ui-form-changed"
    browser.get(f"{ui_stack.prefect_ui}/v2/deployments")
    ui.click(
        browser,
        "//tr[.//*[text()='convert']]//a[contains(@href, '/deployments/deployment/')]",
        "the convert deployment",
    )
    ui.click(browser, "//button[normalize-space()='Run']", "the Run button")
    ui.click(browser, "//*[@role='menuitem' and normalize-space()='Custom run']", "Run → Custom run")

    prefilled = ui.wait(browser, lambda: field(browser, "Name").get_attribute("value"), "the recipe's name")
    assert prefilled == ui_stack.recipe.name  # `moe2dense deploy --recipe` pre-filled the form
    replace_text(field(browser, "Name"), recipe_name)
    replace_text(field(browser, "Run Name"), run_name)
    ui.screenshot(browser, "prefect-3-custom-run-form")
    ui.click(browser, "//button[@type='submit' and normalize-space()='Submit']", "Submit")
    ui.text_shown(browser, f"{run_name} scheduled", "the run-created notice")

    ui.click(browser, "//a[normalize-space()='Runs' and contains(@href, '/runs')]", "Runs in the navigation")
    ui.click(
        browser,
        f"//a[normalize-space()='{run_name}' and contains(@href, '/runs/flow-run/')]",
        f"{run_name} in the runs list",
    )
    state = wait_for_final_state(browser, run_name)
    ui.screenshot(browser, "prefect-4-custom-run")
    logs = ui.page_text(browser)
    assert state == "Completed", f"run {run_name} is {state} after {RUN_TIMEOUT_S:.0f} s:\n{logs[:3000]}"
    assert f"Worker '{WORKER_NAME}' submitting flow run" in logs  # the stack's worker ran it
    assert f"Work Pool\n{ui_stack.config.work_pool}" in logs
    open_tab(browser, "Parameters")
    ui.text_shown(browser, f'"name": "{recipe_name}"', "the changed recipe name in the run's parameters")


# ---- MLflow UI ------------------------------------------------------------------------------------
def grid_rows(driver) -> dict[str, str]:
    """{run id: run name} of the rows the runs table shows."""
    from selenium.webdriver.common.by import By

    links = driver.find_elements(
        By.XPATH, "//*[@role='row' and @row-id]//*[@col-id='attributes.`Run Name`']//a"
    )
    return {
        link.find_element(By.XPATH, "./ancestor::*[@role='row'][1]").get_attribute("row-id"): link.text
        for link in links
    }


def test_mlflow_ui_shows_the_parent_run_its_stage_runs_and_the_registered_model_lineage(browser, ui_stack):
    from selenium.webdriver.common.by import By

    recipe, cli_run = ui_stack.recipe, ui_stack.cli_run
    browser.get(f"{ui_stack.mlflow_ui}/#/experiments")
    ui.click(browser, f"//a[normalize-space()='{recipe.tracking.experiment}']", "the experiment")
    experiment_id = ui.wait(
        browser, lambda: re.search(r"#/experiments/(\d+)", browser.current_url), "experiment page"
    )[1]
    browser.get(f"{ui_stack.mlflow_ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")

    def table_with_parent() -> dict[str, str] | None:
        rows = grid_rows(browser)
        return rows if recipe.name in rows.values() else None

    before = ui.wait(browser, table_with_parent, f"the parent run {recipe.name} in the runs table")
    (parent_id,) = [run_id for run_id, name in before.items() if name == recipe.name]
    ui.click(
        browser,
        f"//*[@role='row' and @row-id='{parent_id}']//*[@col-id='attributes.`Run Name`']//button",
        "the parent run's expand button",
    )

    def nested_stage_runs() -> set[str] | None:
        names = {name for run_id, name in grid_rows(browser).items() if run_id not in before}
        return names if names >= NESTED_STAGE_RUNS else None

    ui.wait(browser, nested_stage_runs, f"nested runs {sorted(NESTED_STAGE_RUNS)} under the parent run")
    ui.screenshot(browser, "mlflow-1-nested-stage-runs")

    ui.click(
        browser,
        f"//a[normalize-space()='{recipe.name}' and contains(@href, '/runs/{parent_id}')]",
        "the parent run's link",
    )

    def child_run_links() -> set[str] | None:  # the "Child runs" row, loaded after the run itself
        names = {link.text for link in browser.find_elements(By.XPATH, "//a[contains(@href, '/runs/')]")}
        return names if names >= NESTED_STAGE_RUNS else None

    ui.wait(browser, child_run_links, "links to the stage runs among the parent run's child runs")
    page = ui.text_shown(browser, TAG_PREFECT_FLOW_RUN_URL, "the parent run's tags")
    flow_run_url = re.search(rf"{re.escape(TAG_PREFECT_FLOW_RUN_URL)}\s*:\s*(\S+)", page)[1]
    assert cli_run.id in flow_run_url
    ui.screenshot(browser, "mlflow-2-parent-run")

    browser.get(f"{ui_stack.mlflow_ui}/#/models")
    ui.click(browser, f"//a[normalize-space()='{recipe.tracking.registered_model}']", "the registered model")
    ui.click(browser, "//a[normalize-space()='Version 1']", "version 1")
    tags = version_tags(ui.text_shown(browser, TAG_CHECKPOINT_DIGEST, "the version's tags"))
    assert tags[TAG_SOURCE_MODEL] == recipe.source.model
    assert tags[TAG_PREFECT_FLOW_RUN] == cli_run.id
    assert tags[TAG_CHECKPOINT_URI].startswith(f"s3://{ui_stack.config.bucket}/artifacts/")
    for digest in LINEAGE_DIGESTS:
        assert SHA256.fullmatch(tags[digest]), (digest, tags.get(digest))
    ui.screenshot(browser, "mlflow-3-model-version-lineage")

    browser.get(flow_run_url)  # the lineage link back to Prefect opens the flow run
    assert "Completed" in ui.text_shown(browser, cli_run.name, "the flow run the MLflow tag links to")


def version_tags(page: str) -> dict[str, str]:
    """{tag: value} of the lineage tags a model version page shows (the value on the line after the name)."""
    tags = (TAG_SOURCE_MODEL, TAG_PREFECT_FLOW_RUN, TAG_CHECKPOINT_URI, *LINEAGE_DIGESTS)
    shown = {tag: re.search(rf"^{re.escape(tag)}\n(.+)$", page, re.MULTILINE) for tag in tags}
    assert all(shown.values()), (
        f"tags not shown: {[tag for tag, match in shown.items() if not match]}\n{page}"
    )
    return {tag: match[1] for tag, match in shown.items()}
