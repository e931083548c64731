"""The studio in a real headless browser (Debian's Chromium through Selenium): type a script,
generate, and play the result; upload a recording and make a voice of it. Screenshots go to
test-artifacts/studio/ (or $DIA2_TEST_ARTIFACTS/studio/). Skipped, with the reason, where
Chromium or its driver is not installed (.ci/run installs them).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_studio import FIXTURES, REPO_ROOT, live_studio

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"the browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (pip install selenium)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(os.environ.get("DIA2_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "studio"
AUDIO_MAGIC = (b"RIFF", b"ID3", b"\xff\xfb", b"\xff\xf3", b"fLaC", b"OggS")


@pytest.fixture(scope="module")
def live(request, tmp_path_factory, tiny_bundle_dir, tiny_en):
    return live_studio(request, tmp_path_factory, tiny_bundle_dir, tiny_en)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait(driver, condition, timeout: float = 180, what: str = ""):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: condition(d))
    except Exception:
        screenshot(driver, f"failed-{what or 'wait'}")
        raise


def open_tab(driver, label: str) -> None:
    tab = wait(driver, lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                       if b.text.strip() == label), None), what=f"tab-{label}")
    tab.click()


def set_text(driver, elem_id: str, text: str) -> None:
    box = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input"),
               what=elem_id)
    box.clear()
    box.send_keys(text)


def test_type_a_script_generate_and_play_it(live, browser):
    browser.get(live.url)
    set_text(browser, "speak-script", "[S1] Hello from the browser. [S2] Hi!")
    browser.find_element(By.ID, "speak-generate").click()

    def playable(d):
        audio = d.find_elements(By.CSS_SELECTOR, "#speak-audio audio")
        src = audio[0].get_attribute("src") if audio else None
        return src if src and src.startswith("http") else None

    src = wait(browser, playable, what="speak")
    status = browser.find_element(By.ID, "speak-status").text
    screenshot(browser, "speak")
    data = httpx.get(src, timeout=60).content
    assert data.startswith(AUDIO_MAGIC) and len(data) > 10_000, data[:16]
    assert status.startswith("done") and "word(s)" in status
    words = browser.find_element(By.ID, "speak-words").text
    assert "browser." in words and "Hi!" in words


def test_upload_a_recording_and_make_a_voice(live, browser):
    browser.get(live.url)
    open_tab(browser, "Voices")
    upload = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#voice-recording input[type=file]"),
                  what="voice-upload")
    upload.send_keys(str(FIXTURES / "voice_a.flac"))
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#voice-recording audio"), what="voice-uploaded")
    browser.find_element(By.ID, "voice-transcribe").click()
    transcript = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#voice-transcript textarea")
                      .get_attribute("value"), what="voice-transcript")
    assert len(transcript.split()) >= 5  # "The quick brown fox jumps over the lazy dog." give or take a word
    set_text(browser, "voice-name", "from-browser")
    browser.find_element(By.ID, "voice-save").click()
    status = wait(browser, lambda d: "saved" in d.find_element(By.ID, "voice-status").text
                  and d.find_element(By.ID, "voice-status").text, what="voice-save")
    assert status.startswith("voice 'from-browser' saved")
    assert (live.voices / "from-browser" / "voice.json").is_file()
    # The voice table refreshes after the save (an event of its own): waited for, not slept on.
    wait(browser, lambda d: "from-browser" in d.find_element(By.ID, "voice-table").text, what="voice-table")
    screenshot(browser, "voice")


def test_a_bad_input_shows_a_message_not_a_traceback(live, browser):
    browser.get(live.url)
    set_text(browser, "speak-script", "[S1] Hello. [S3] Who is this?")
    browser.find_element(By.ID, "speak-generate").click()
    toast = wait(browser, lambda d: next((e.text for e in d.find_elements(By.CSS_SELECTOR, ".toast-body, .toast-wrap")
                                          if "[S3]" in e.text), None), what="bad-tag")
    screenshot(browser, "bad-input")
    assert "unknown tag '[S3]'" in toast and "Traceback" not in browser.page_source

