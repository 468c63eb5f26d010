"""A real browser for the tests of what people do in the UIs: the system's headless Chromium driven by Selenium.

Chromium and chromedriver come from the Debian packages (`make browser-tools`); nothing is downloaded at run time
(Selenium Manager is bypassed by naming both binaries). A missing browser is a failure with the command that
installs it, never a skip. Screenshots go to SCREENSHOTS (test artifacts, git-ignored) and, when given, to a
test's own folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("MLOPS_SCREENSHOTS", ROOT / ".cache" / "screenshots"))


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        f"no {' / '.join(names)} on PATH: the browser tests need Chromium and its chromedriver "
        "(`make browser-tools`, i.e. `apt-get install chromium chromium-driver`)"
    )


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1000) -> Iterator:
    """A headless Chromium (selenium WebDriver), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser", "google-chrome")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(_binary("chromedriver")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str, also: Path | None = None) -> Path:
    """Save the page as SCREENSHOTS/<name>.png (and into `also`, a test's folder); returns the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    if also is not None:
        also.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, also / path.name)
    return path


def wait_until(driver, check: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    """Poll `check` (a function of the page) until it returns something truthy; screenshot + fail on timeout."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except WebDriverException as exc:  # the page is still rendering: elements come and go
            last_error = exc
        time.sleep(interval)
    shot = screenshot(driver, f"timeout-{int(time.time())}")
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (screenshot {shot}; last: {last_error})")


def page_text(driver) -> str:
    """The visible text of the page."""
    return driver.find_element("tag name", "body").text


# ------------------------------------------------------------------------------ the Prefect UI's approval form
def open_resume_form(driver, prefect_base: str, flow_run_id, timeout: float = 60):
    """Open the waiting run's page in the Prefect UI, press Resume; the form's modal element."""
    driver.get(f"{prefect_base}/runs/flow-run/{flow_run_id}")

    def resume_button():
        return [b for b in driver.find_elements("tag name", "button") if b.text.strip() == "Resume"]

    wait_until(driver, resume_button, timeout, "the run page's Resume button")[0].click()
    return wait_until(driver, lambda: driver.find_elements("css selector", ".p-modal"), 20, "the form")[0]


def fill_approval(modal, decision: str | None, approver: str, reason: str) -> None:
    """Choose the decision (None: leave it unset) and type the approver's name and reason into the form."""
    from selenium.webdriver.support.ui import Select

    if decision is not None:
        Select(modal.find_element("css selector", "select")).select_by_visible_text(decision)
    name, why = modal.find_elements("css selector", "textarea")[:2]
    for area, text in ((name, approver), (why, reason)):
        area.clear()
        area.send_keys(text)


def submit(modal) -> None:
    """Press the form's Submit button."""
    next(b for b in modal.find_elements("tag name", "button") if b.text.strip() == "Submit").click()


def show_artifact(driver, prefect_base: str, flow_run_id, key: str, expect: str, timeout: float = 60) -> str:
    """Open the flow run's artifact `key` in the Prefect UI (what the approver reads); its text once `expect`
    shows."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    assert artifacts, f"flow run {flow_run_id} has no artifact {key!r}"
    driver.get(f"{prefect_base}/artifacts/artifact/{artifacts[-1].id}")
    return wait_until(driver, lambda: expect in (text := page_text(driver)) and text, timeout, f"artifact {key}")
