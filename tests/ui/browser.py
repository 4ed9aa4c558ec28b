"""Headless Chromium for the UI tests: Debian's `chromium` and `chromedriver` (apt, installed by
scripts/test.sh) driven by Selenium, with every host name but 127.0.0.1 unresolvable, so a page that
needs the internet fails here instead of passing only where there is a network.

Both UIs are single-page apps that render after their API answers, so every read waits for an element
(`wait`, bounded: `WAIT_S` unless told) instead of sleeping. Screenshots go to `ARTIFACTS`
(`test-artifacts/ui/` in the repository root, git-ignored, kept by CI).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "ui"
WAIT_S = 30.0
WINDOW = "1600,1300"
T = TypeVar("T")


def missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    absent = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if absent:
        return f"{' and '.join(absent)} not on PATH (apt-get install chromium chromium-driver; scripts/test.sh does)"
    return None


def start_chromium(log_path: Path):
    """A headless Chromium session (1600×1300) that resolves no host but 127.0.0.1; driver log at `log_path`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    service = Service(executable_path=shutil.which("chromedriver"), log_output=str(log_path))
    return webdriver.Chrome(options=options, service=service)


def wait(driver, found: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """The first truthy `found()` within `timeout_s`, retried while the page renders; else a failure
    naming `what`, the URL and the start of the page's text."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = found()
        except (StaleElementReferenceException, WebDriverException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not shown after {timeout_s:.0f} s on {driver.current_url}\npage text:\n{page_text(driver)[:3000]}"
            )
        time.sleep(0.25)


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def element(driver, xpath: str, what: str, timeout_s: float = WAIT_S):
    """The first displayed element matching `xpath`, waited for."""
    from selenium.webdriver.common.by import By

    def shown():
        return next((found for found in driver.find_elements(By.XPATH, xpath) if found.is_displayed()), None)

    return wait(driver, shown, what, timeout_s)


def click(driver, xpath: str, what: str, timeout_s: float = WAIT_S) -> None:
    """Click the first displayed element matching `xpath` once it can be clicked; a modal dialog in the
    way (MLflow's promotions of new UIs) is closed with its Close button first, as a person would."""
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        target = next(
            (found for found in driver.find_elements(By.XPATH, xpath) if found.is_displayed()), None
        )
        if target is None:
            return False
        try:
            target.click()
        except ElementClickInterceptedException:
            for close in driver.find_elements(By.XPATH, "//*[@role='dialog']//button[@aria-label='Close']"):
                if close.is_displayed():
                    close.click()
            return False
        return True

    wait(driver, clicked, what, timeout_s)


def screenshot(driver, name: str) -> Path:
    """Save the viewport as `ARTIFACTS/<name>.png`; returns the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def text_shown(driver, needle: str, what: str, timeout_s: float = WAIT_S) -> str:
    """The page's text once it contains `needle`, waited for."""

    def containing() -> str | None:
        text = page_text(driver)
        return text if needle in text else None

    return wait(driver, containing, what, timeout_s)


def reached(driver, url_part: str, what: str, timeout_s: float = WAIT_S) -> str:
    """The current URL once it contains `url_part` (a click navigated), waited for."""
    return wait(driver, lambda: url_part in driver.current_url and driver.current_url, what, timeout_s)
