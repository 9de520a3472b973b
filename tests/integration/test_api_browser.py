"""The dashboard in a real browser: Debian's chromium driven by selenium through the system
chromedriver (no driver download), against uvicorn on loopback with real PostgreSQL and runs computed
by the real engine. Screenshots of each page are saved in the test's tmp folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from gate.alerts.store import resolve_fingerprints, upsert_open_alert
from gate.calibration import store as calibrations
from gate.calibration.learn import Learnt
from gate.store import make_engine, session_scope
from tests.integration.test_api import AUTH, WRITE, api_settings, render_set, wait_judged
from tests.support.live_server import live_server

CHROMEDRIVER, CHROMIUM = "/usr/bin/chromedriver", "/usr/bin/chromium"
CALIBRATED_MEAN = 0.05


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shot(driver: WebDriver, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    with Image.open(path) as image:
        assert image.size[0] >= 1200
    return path


def _clip(driver: WebDriver, image) -> str:
    return str(driver.execute_script("return arguments[0].style.clipPath", image))


def test_runs_run_and_suite_pages_in_chromium(pg_url: str, tmp_path: Path, browser: WebDriver) -> None:
    images = render_set(tmp_path / "images")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    settings = api_settings(pg_url, images, api_token=SecretStr(WRITE))
    with live_server(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        for commit in ("aaa", "bbb", "ccc"):
            created = client.post("/api/v1/runs", json={"suite": "hero", "ref": "ref", "cand": "new",
                                                        "threshold": 0.1, "meta": {"commit": commit}})
            assert created.status_code == 201, created.text
            run = wait_judged(client, created.json()["run"])
        engine = make_engine(pg_url)
        with session_scope(engine) as session:  # a calibration and a drift alert for the suite page to mark
            calibrations.record(session, suite="hero", net="alex", weights_version="test", run_ids=[1], pairs=2,
                                margin=0.25, learnt=Learnt(thresholds={"mean": CALIBRATED_MEAN}, per_image={}))
            upsert_open_alert(session, rule="drift", suite_name="hero", labels={"suite": "hero", "net": "alex"},
                              value=0.9, threshold=0.001, run_id=2)
            resolved, _ = upsert_open_alert(session, rule="score", suite_name="hero", labels={"suite": "hero"},
                                            value=3.0, threshold=1.0, run_id=1)
            resolve_fingerprints(session, fingerprints=[resolved.fingerprint])
        engine.dispose()

        browser.get(f"{url}/")
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.run")
        assert [row.get_attribute("data-run") for row in rows] == ["3", "2", "1"]
        assert "FAIL" in rows[0].text and "commit=ccc" in rows[0].text and "hero" in rows[0].text
        _shot(browser, shots, "runs")

        browser.get(f"{url}/runs/{run['run']}")
        sections = browser.find_elements(By.CSS_SELECTOR, "section.pair")
        assert [section.get_attribute("class") for section in sections] == ["pair fail", "pair pass"]  # worst first
        assert "ref/b.png → new/b.png" in sections[0].text
        for image in browser.find_elements(By.CSS_SELECTOR, "section.pair img"):
            loaded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
            heatmap = image.get_attribute("class") == "heatmap"
            assert loaded == 64 or (heatmap and loaded > 0), image.get_attribute("src")
        assert len(browser.find_elements(By.CSS_SELECTOR, "section.pair img.heatmap")) == 2
        assert browser.find_elements(By.CSS_SELECTOR, "section.pair .colourbar .ramp")
        assert len(browser.find_elements(By.CSS_SELECTOR, "section.pair .where")) == 2  # the worst region
        bars = browser.find_elements(By.CSS_SELECTOR, "section.pair .layers .bar")
        assert len(bars) == 10  # five alex layers a pair
        cand = sections[0].find_element(By.CSS_SELECTOR, "img.ab-cand")
        slider = sections[0].find_element(By.CSS_SELECTOR, "input.ab-range")
        assert _clip(browser, cand) == "inset(0px 50% 0px 0px)"
        _shot(browser, shots, "run")
        slider.send_keys(Keys.HOME)
        assert _clip(browser, cand) == "inset(0px 100% 0px 0px)"
        for _ in range(30):
            slider.send_keys(Keys.ARROW_RIGHT)
        assert _clip(browser, cand) == "inset(0px 70% 0px 0px)"
        assert slider.get_attribute("value") == "30"
        _shot(browser, shots, "run-slider-moved")

        browser.get(f"{url}/suites/hero")
        points = browser.find_elements(By.CSS_SELECTOR, "svg.trend circle.point")
        assert len(points) == 3
        assert {point.get_attribute("class") for point in points} == {"point fail"}
        heights = [float(point.get_attribute("cy")) for point in points]
        assert max(heights) - min(heights) < 1  # the same folders: the same mean distance each run
        [threshold] = browser.find_elements(By.CSS_SELECTOR, "svg.trend line.threshold")
        assert float(threshold.get_attribute("y1")) > heights[0]  # 0.05 sits below the runs' mean (about 0.6)
        [drift] = browser.find_elements(By.CSS_SELECTOR, "svg.trend line.drift")
        assert drift.get_attribute("x1") == points[1].get_attribute("cx")  # on run 2
        _shot(browser, shots, "suite")

        browser.get(f"{url}/alerts")
        links = [link.get_attribute("href") for link in browser.find_elements(By.CSS_SELECTOR, "table.open a")
                 if "/runs/" in (link.get_attribute("href") or "")]
        assert f"{url}/runs/2" in links
        [row] = browser.find_elements(By.CSS_SELECTOR, "table.resolved tr.alert")
        assert "score" in row.text and row.find_element(By.CSS_SELECTOR, "a[href='/runs/1']").text == "#1"
        _shot(browser, shots, "alerts")
    print(f"screenshots: {shots}")
