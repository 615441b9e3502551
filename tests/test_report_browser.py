"""The HTML report in headless Chromium at 1366x768: no console errors, no network request (the
CSP blocks them, the inline script runs by its hash), no horizontal page overflow, wide tables
scroll in their own box with a sticky first column, tables sort and filter, and no two text
labels of a figure overlap as the browser lays them out. Skipped without Chromium, chromedriver
or selenium (install: apt-get install -y chromium chromium-driver; pip install selenium)."""

from __future__ import annotations

import itertools
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
         "--window-size=1366,768")

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


def test_no_horizontal_page_overflow_at_1366(driver, loaded):
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    width = driver.execute_script("return window.innerWidth")
    assert width <= 1366
    page = driver.execute_script("return document.documentElement.scrollWidth")
    assert page <= driver.execute_script("return document.documentElement.clientWidth"), page
    wide = driver.execute_script(
        "return [...document.querySelectorAll('table.data')].filter(t => "
        "t.getBoundingClientRect().width > t.parentElement.clientWidth + 1 && "
        "!t.parentElement.classList.contains('scroll')).map(t => t.id || t.className)")
    assert not wide, wide


def test_wide_table_scrolls_with_a_sticky_first_column(driver, loaded):
    box = driver.execute_script(
        "const t = document.getElementById('main-table'); const box = t.parentElement;"
        "box.scrollIntoView(); box.scrollLeft = 0;"
        "const cell = t.tBodies[0].rows[1].cells[0];"
        "const before = cell.getBoundingClientRect().left;"
        "box.scrollLeft = 400; const after = cell.getBoundingClientRect().left;"
        "return {scrolls: box.scrollWidth > box.clientWidth, scrolled: box.scrollLeft,"
        " before, after, left: box.getBoundingClientRect().left}")
    assert box["scrolls"] and box["scrolled"] > 0, box
    assert abs(box["after"] - box["before"]) < 1 and abs(box["after"] - box["left"]) < 2, box


def _column(driver: Any, table: str, index: int) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.getElementById(arguments[0]).tBodies].map(b => [...b.rows]"
        ".filter(r => !r.classList.contains('block') && r.cells.length > arguments[1])"
        ".map(r => r.cells[arguments[1]].textContent.trim()))", table, index)


def _ordered(body: list[str], reverse: bool = False) -> bool:
    """Numbers (each cell's first token) in order, missing values ("-") after them."""
    values = [None if v.split()[0] == "-" else float(v.split()[0]) for v in body]
    numbers = [v for v in values if v is not None]
    return (numbers == sorted(numbers, reverse=reverse)
            and values == numbers + [None] * (len(values) - len(numbers)))


def test_sorting_a_column_reorders_rows(driver, loaded):
    from selenium.webdriver.common.by import By

    header = driver.find_elements(By.CSS_SELECTOR, "#main-table thead tr:last-child th")
    labels = [h.text for h in header]
    acc = labels.index("accuracy (95% CI)")
    before = _column(driver, "main-table", 0)
    driver.execute_script("arguments[0].click()", header[acc])
    ascending = _column(driver, "main-table", acc)
    assert all(_ordered(body) for body in ascending), ascending
    after = _column(driver, "main-table", 0)
    assert after != before and [sorted(b) for b in after] == [sorted(b) for b in before]
    assert header[acc].get_attribute("aria-sort") == "ascending"
    driver.execute_script("arguments[0].click()", header[acc])
    descending = _column(driver, "main-table", acc)
    assert all(_ordered(body, reverse=True) for body in descending), descending
    driver.execute_script("arguments[0].click()", header[0])
    names = _column(driver, "main-table", 0)
    assert all(body == sorted(body) for body in names)


def test_filters_hide_rows_and_device_columns(driver, loaded):
    from selenium.webdriver.common.by import By

    def visible(selector: str) -> list[Any]:
        return [e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]

    rows = "#main-table tbody tr[data-method]"
    total = len(visible(rows))
    method = driver.find_element(By.ID, "filter-method")
    method.send_keys("ptq")
    shown = visible(rows)
    assert 0 < len(shown) < total
    assert all("ptq" in r.get_attribute("data-method") for r in shown)
    significance = visible("table.significance tbody tr")
    assert significance and all("ptq" in r.text for r in significance if r.find_elements(
        By.TAG_NAME, "td"))
    method.clear()
    driver.execute_script("arguments[0].dispatchEvent(new Event('input', {bubbles: true}))",
                          method)
    assert len(visible(rows)) == total
    device = driver.find_element(By.ID, "filter-device")
    device.send_keys("raspberry")
    cells = driver.find_elements(By.CSS_SELECTOR, "#main-table [data-device]")
    assert cells and all(c.is_displayed() == ("raspberry" in c.get_attribute("data-device"))
                         for c in cells)
    device.clear()
    driver.execute_script("arguments[0].dispatchEvent(new Event('input', {bubbles: true}))",
                          device)
    assert all(c.is_displayed() for c in cells)


def _overlapping(rects: list[dict[str, Any]], slack: float = 0.5) -> list[tuple[str, str]]:
    return [(a["text"], b["text"]) for a, b in itertools.combinations(rects, 2)
            if min(a["right"], b["right"]) - max(a["left"], b["left"]) > slack
            and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > slack]


def test_no_two_labels_overlap_in_the_browser(driver, loaded):
    figures = driver.execute_script(
        "return [...document.querySelectorAll('figure.plot svg')].map(svg => "
        "[...svg.querySelectorAll('text')].filter(t => t.textContent.trim()).map(t => {"
        "const r = t.getBoundingClientRect(); return {text: t.textContent, left: r.left,"
        " right: r.right, top: r.top, bottom: r.bottom}; }))")
    assert figures and all(figures)
    clashes = [c for rects in figures for c in _overlapping(rects)]
    assert not clashes, clashes[:10]
    for selector in ("nav a", "#table-filter label"):
        rects = driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => {"
            "const r = e.getBoundingClientRect(); return {text: e.textContent, left: r.left,"
            " right: r.right, top: r.top, bottom: r.bottom}; })", selector)
        assert rects and not _overlapping(rects), selector


def test_csp_blocks_network_and_allows_only_the_hashed_script(driver, loaded):
    from selenium.webdriver.common.by import By

    policy = driver.find_element(
        By.CSS_SELECTOR, "meta[http-equiv='Content-Security-Policy']").get_attribute("content")
    script_src = next(p for p in policy.split(";") if p.strip().startswith("script-src"))
    assert "'sha256-" in script_src and "unsafe" not in script_src
    assert "default-src 'none'" in policy
    assert driver.find_elements(By.ID, "table-filter")   # the hashed inline script ran
    entries = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("data:") for name in entries), entries
    driver.get_log("performance")
    violations = driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const seen = [];"
        "document.addEventListener('securitypolicyviolation', e => seen.push(e.violatedDirective));"
        "const img = new Image(); img.src = 'http://127.0.0.1:9/probe.png';"
        "document.body.append(img);"
        "const s = document.createElement('script'); s.textContent = 'window.evil = 1';"
        "document.body.append(s);"
        "fetch('http://127.0.0.1:9/probe').catch(() => null)"
        ".finally(() => setTimeout(() => done(seen), 300));")
    assert {"img-src", "script-src-elem", "connect-src"} <= set(violations), violations
    assert driver.execute_script("return window.evil") is None
    events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    sent = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
            if e["method"] == "Network.requestWillBeSent"}
    blocked = {e["params"]["requestId"] for e in events if e["method"] == "Network.loadingFailed"
               and e["params"].get("blockedReason") == "csp"}
    answered = [e["params"]["response"]["url"] for e in events
                if e["method"] == "Network.responseReceived"]
    assert not [u for u in answered if u.startswith("http")], answered
    assert not [u for i, u in sent.items() if u.startswith("http") and i not in blocked], sent
    driver.get_log("browser")   # the probes' expected CSP errors are not the page's
