"""The dashboard in a real headless Chromium: it loads without console errors, shows a task posted through
the API and a worker connecting, and updates live without a reload. The screenshot goes to build/."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from typing import Any

from ethml.chain import dev_account
from tests.conftest import ROOT, missing_service
from tests.coordinator.conftest import Coordinator
from tests.coordinator.test_flow import post_wine_task

SCREENSHOT = ROOT / "build" / "dashboard.png"


def _browser() -> Any:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        missing_service("chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard did not show {what} within {timeout:g} s")
        time.sleep(0.2)


async def test_the_dashboard_shows_tasks_and_workers_live(coordinator: Coordinator) -> None:
    c = coordinator
    driver = await asyncio.to_thread(_browser)  # Selenium blocks: keep it off the server's event loop
    try:
        await asyncio.to_thread(driver.get, c.url + "/")
        await asyncio.to_thread(
            _wait, lambda: driver.find_element("id", "conn").text == "live", 30, "its live connection"
        )
        # A marker that a reload would wipe out.
        await asyncio.to_thread(driver.execute_script, "window.__ethmlMarker = 'same page';")

        key = await c.requester_key()
        task_id, _ = await post_wine_task(c, key)
        await asyncio.to_thread(
            _wait, lambda: task_id[:12] in driver.find_element("id", "tasks").text, 30, "the posted task"
        )
        c.start_worker("validator", 7)
        address = dev_account(7).address
        short = address[:8]
        await asyncio.to_thread(
            _wait, lambda: short in driver.find_element("id", "workers").text, 90, "the connected worker"
        )
        assert "validator" in driver.find_element("id", "workers").text
        assert await asyncio.to_thread(driver.execute_script, "return window.__ethmlMarker;") == "same page"
        oracle = driver.find_element("id", "oracle").text
        assert "phase" in oracle and "idle" in oracle, oracle
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await asyncio.to_thread(driver.save_screenshot, str(SCREENSHOT))
        logs = await asyncio.to_thread(driver.get_log, "browser")
        errors = [entry for entry in logs if entry["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        await asyncio.to_thread(driver.quit)
    assert SCREENSHOT.stat().st_size > 10_000
