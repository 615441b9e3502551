"""The HTML report in headless Chromium: no console errors, no network request, and the main
table and the plots are laid out with a non-zero size. Skipped without Chromium, chromedriver
or selenium (install: apt-get install -y chromium chromium-driver; pip install selenium)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.report import build_report
from tests.test_report import Spec, generate

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1400,1000")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium or chromedriver not found on PATH "
                                       "(apt-get install -y chromium chromium-driver)")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    gen = generate(root / "s", Spec(seeds=6, devices=(("host", "m1"), ("raspberry-pi-4", "pi")),
                                    overlays=True, flagged=True, failed=1))
    return build_report(gen.store, root / "index.html")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def loaded(driver: Any, report: Path) -> dict[str, Any]:
    driver.get_log("performance")
    driver.get_log("browser")
    url = report.resolve().as_uri()
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"
    events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    return {"url": url, "console": driver.get_log("browser"),
            "requests": [e["params"] for e in events
                         if e["method"] == "Network.requestWillBeSent"]}


def _size(element: Any) -> tuple[float, float]:
    return element.size["width"], element.size["height"]


def test_no_console_errors(loaded):
    errors = [e for e in loaded["console"] if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def test_no_network_requests(loaded):
    ours = [r["request"]["url"] for r in loaded["requests"]
            if r.get("documentURL") == loaded["url"]]
    assert loaded["url"] in ours
    others = [u for u in ours if u != loaded["url"] and not u.startswith("data:")]
    assert not others, others
    remote = [r["request"]["url"] for r in loaded["requests"]
              if r["request"]["url"].split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert not remote, remote


def test_main_table_and_plots_are_visible(driver, loaded, tmp_path):
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.ID, "main-table")
    assert table.is_displayed() and min(_size(table)) > 0
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) >= 5
    plots = driver.find_elements(By.CSS_SELECTOR, "figure.plot svg")
    assert plots and all(p.is_displayed() and min(_size(p)) > 0 for p in plots)
    images = driver.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert images and all(
        driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
