"""End to end in a real browser: headless Debian chromium (selenium + chromedriver) against the
real MLflow UI over a study's tracking store.

Needs ``apt-get install -y chromium chromium-driver`` (``.ci/run`` installs it) and selenium
(the ``test`` extra); fails with what to install when they are missing.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from pathlib import Path

import optuna
import pytest

from presso.search.tracking import MlflowTracker, experiment_url, run_url, spawn_ui, study_urls
from presso.search.tracking._testing import add_trial, create_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
optuna.logging.set_verbosity(optuna.logging.WARNING)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
POINTS = [(1.2, 0.5), (1.1, 0.6), (1.5, 0.3), (2.5, 0.1), (1.0, 0.9), (1.3, 0.55)]
FRONT = {0, 1, 2, 4}
SCREENSHOT_DIR = os.environ.get("PRESSO_SCREENSHOT_DIR")  # keep the pictures (CI artifacts)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("needs Debian's chromium: apt-get install -y chromium chromium-driver (.ci/run installs it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the page is still rendering
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"the MLflow UI never showed {what}; page text: {driver.find_element('tag name', 'body').text[:800]!r}")
        time.sleep(0.3)


def _run_names(driver) -> set[str]:
    from selenium.webdriver.common.by import By

    return {e.text for e in driver.find_elements(By.CSS_SELECTOR, "a[href*='/runs/'] span") if e.text}


def _open_runs(driver, url: str, expect_parent: str) -> set[str]:
    """Open a runs table, expand the parent run's children, return the run names shown."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, lambda: expect_parent in _run_names(driver), f"the parent run {expect_parent!r}")
    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        try:
            close.click()  # the "MLflow Assistant" side panel, which hides columns
        except Exception:  # noqa: BLE001
            pass
    def children_shown():
        return any(n.startswith("trial ") for n in _run_names(driver))

    try:  # the UI remembers expanded parents between pages
        _wait(driver, children_shown, "the child runs", timeout=3)
    except AssertionError:
        driver.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
        _wait(driver, children_shown, "the child runs")
    time.sleep(1.0)  # let the table settle
    return _run_names(driver)


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOT_DIR) / name))
    assert path.stat().st_size > 10_000
    return path


def test_mlflow_ui_shows_trials_front_filter_and_pareto_plot(tmp_path, browser, capsys):
    from selenium.webdriver.common.by import By

    backend = f"sqlite:///{tmp_path}/mlflow.db"
    study = create_study(f"sqlite:///{tmp_path}/studies.db", "browser-demo")
    tracker = MlflowTracker(backend, refresh_min_s=0, flush_timeout_s=240)  # a new MLflow schema is slow on busy CPUs
    tracker.on_run_start(study, None)
    for i, point in enumerate(POINTS):
        tracker.on_trial_end(study, add_trial(study, *point, seed=i))
    tracker.on_run_end(study, "FINISHED")
    experiment_id, parent_id = tracker.experiment_id, tracker.parent_run_id

    with spawn_ui(backend, log_path=tmp_path / "ui.log") as ui:
        # The experiment's link as `presso ui` prints it opens the runs table (a row per run),
        # not MLflow 3's GenAI overview (the page a click in MLflow's experiment list shows).
        base = study_urls(backend, ui.url)["browser-demo"]
        assert base == experiment_url(ui.url, experiment_id)
        shown = _open_runs(browser, base, "run 1")
        assert "/runs" in browser.current_url and "No data available" not in browser.find_element(By.TAG_NAME, "body").text
        assert {f"trial {n}" for n in range(len(POINTS))} <= shown
        _shot(browser, tmp_path, "runs.png")

        query = urllib.parse.quote('tags.presso.pareto = "true"')
        shown = _open_runs(browser, f"{base}&searchFilter={query}", "run 1")
        assert {n for n in shown if n.startswith("trial ")} == {f"trial {n}" for n in FRONT}
        front_png = _shot(browser, tmp_path, "pareto_filter.png")

        browser.get(run_url(ui.url, experiment_id, parent_id, "artifacts"))
        _wait(browser, lambda: "pareto_front.html" in browser.find_element(By.TAG_NAME, "body").text, "the Pareto artifact")
        assert "pareto_front.png" in browser.find_element(By.TAG_NAME, "body").text
        browser.find_element(By.XPATH, "//*[normalize-space(text())='pareto_front.html']").click()
        frame = _wait(browser, lambda: browser.find_element(By.TAG_NAME, "iframe"), "the HTML artifact viewer")
        browser.switch_to.frame(frame)
        _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, ".plot-container .scatterlayer"), "the plotly figure")
        legend = browser.find_element(By.CSS_SELECTOR, ".legend").text
        browser.switch_to.default_content()
        assert "Pareto front" in legend and "violates constraints" in legend
        plot_png = _shot(browser, tmp_path, "pareto_artifact.png")
    with capsys.disabled():
        print(f"\n[tracking] screenshots: {front_png} {plot_png}")
