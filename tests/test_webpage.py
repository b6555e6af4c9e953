"""The web page at /, in a real headless browser (Debian's chromium driven by Selenium through
chromium-driver): type a headline, click, see the predicted label and one bar per class.

Skipped only when chromium is not installed; .ci/run installs it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from live_server import live_server
from rnntext.inference.predictor import Predictor

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT_COPY = os.environ.get("RNNTEXT_WEBPAGE_SCREENSHOT")  # set it to keep the screenshot somewhere
HEADLINE = "Stocks rally as oil prices fall and investors cheer strong earnings"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed "
                                "(apt-get install chromium chromium-driver; .ci/run does this)")


def test_page_classifies_a_headline(trained_run: Path, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    want = Predictor.load(trained_run, "cpu", threads=1).predict([HEADLINE])[0]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,750", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    with live_server(trained_run) as url:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(30)
            driver.get(url + "/")
            assert driver.title.startswith("rnntext")
            box = driver.find_element(By.ID, "text")
            box.send_keys(HEADLINE)
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 30).until(ec.visibility_of_element_located((By.ID, "label")))
            label = driver.find_element(By.ID, "label").text
            rows = driver.find_elements(By.CSS_SELECTOR, "#bars .row")
            shown = {r.get_attribute("data-label"): r.find_element(By.CSS_SELECTOR, ".pct").text for r in rows}
            best = driver.find_element(By.CSS_SELECTOR, "#bars .row.best").get_attribute("data-label")
            assert driver.find_element(By.ID, "error").text == ""
            shot = tmp_path / "webpage.png"
            assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
            if SCREENSHOT_COPY:
                shutil.copyfile(shot, SCREENSHOT_COPY)
        finally:
            driver.quit()
    assert label == want.label == best
    assert set(shown) == set(want.probabilities)
    for name, p in want.probabilities.items():
        assert shown[name].endswith("%") and float(shown[name][:-1]) == pytest.approx(100 * p, abs=0.051)
