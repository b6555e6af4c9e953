"""The web page at /, in a real headless browser (Debian's chromium driven by Selenium through
chromium-driver): type a headline, click, see the predicted label and one bar per class, and each word
shaded by its attribution (POST /explain) beside the bars.

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

    predictor = Predictor.load(trained_run, "cpu", threads=1)
    want = predictor.predict([HEADLINE])[0]
    why = predictor.explain([HEADLINE])[0] if _has_captum() else None
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
            if why is not None:  # the words, shaded by their attributions (in two colours), with a legend
                WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#words .tok")
                                                or d.find_element(By.ID, "explain-note").text.startswith("No "))
                assert driver.find_element(By.ID, "explain-note").text == ""
                words = driver.find_elements(By.CSS_SELECTOR, "#words .tok")
                shaded = [(w.text, float(w.get_attribute("data-attribution")), w.get_attribute("class"),
                           w.value_of_css_property("background-color")) for w in words]
                assert driver.find_element(By.ID, "explained-label").text == want.label
                assert driver.find_element(By.CSS_SELECTOR, ".legend").is_displayed()
            shot = tmp_path / "webpage.png"
            assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
            if SCREENSHOT_COPY:
                shutil.copyfile(shot, SCREENSHOT_COPY)
        finally:
            driver.quit()
    assert label == want.label == best
    if why is not None:
        assert [t for t, *_ in shaded] == why.tokens
        assert [a for _, a, *_ in shaded] == pytest.approx(why.attributions, abs=1e-5)
        for _, a, cls, colour in shaded:
            assert cls == "tok " + ("pos" if a >= 0 else "neg")
            assert colour.startswith("rgba(31, 157, 85" if a >= 0 else "rgba(214, 48, 49")
    assert set(shown) == set(want.probabilities)
    for name, p in want.probabilities.items():
        assert shown[name].endswith("%") and float(shown[name][:-1]) == pytest.approx(100 * p, abs=0.051)


def _has_captum() -> bool:
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True
