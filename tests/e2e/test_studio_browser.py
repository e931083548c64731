"""The studio in a real headless browser (Debian's Chromium through Selenium), as a new user meets
it: the whole path from recordings to a trained, reproducible voice (one acceptance test), and one
fast test per bug a user hit in the page. Screenshots go to test-artifacts/studio/ (or
$DIA2_TEST_ARTIFACTS/studio/). Skipped, with the reason, where Chromium or its driver is not
installed (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.helpers.studio import FIXTURES, live_studio, split_longest_word

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"the browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (pip install selenium)")
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(os.environ.get("DIA2_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "studio"
AUDIO_MAGIC = (b"RIFF", b"ID3", b"\xff\xfb", b"\xff\xf3", b"fLaC", b"OggS")
WIDE, NARROW = 1400, 420
KNOWN_CONSOLE_NOISE = (
    # gradio 6.31 writes its plots' specs for Vega-Lite 5 and bundles Vega-Lite 6: one warning per plot drawn.
    "The input spec uses Vega-Lite v5",
    # Chromium asks every page for /favicon.ico; gradio serves none for this app.
    "favicon.ico",
    # gradio's audio component (its waveform player) warns so for every recording it shows.
    '"Method not implemented."',
)
"""Browser console lines that are not the studio's: every other warning or error fails a test."""
NONE, RECORDING = "(none)", "(the recording below)"
SENTENCES = (
    "The morning train was late again today.", "She packed a small bag for the weekend.",
    "Please read the first page out loud.", "We walked along the river after lunch.",
    "The old radio still works perfectly well.", "He wrote the numbers on a yellow card.",
    "Bright colours make the kitchen feel warm.", "Our neighbours planted tomatoes this spring.",
)
"""What the acceptance test's eight recordings say, in one espeak-ng voice."""


@pytest.fixture(scope="module")
def live(request, tmp_path_factory, tiny_bundle_dir, tiny_en):
    return live_studio(request, tmp_path_factory, tiny_bundle_dir, tiny_en)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WIDE},1800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture
def page(live, browser):
    """The studio freshly loaded, wide, with an empty console log; after the test, the console
    must hold nothing but known noise."""
    browser.set_window_size(WIDE, 1800)
    browser.get(live.url)
    settle(browser)
    browser.get_log("browser")  # what earlier tests left
    yield browser
    assert console_problems(browser) == []


def settle(driver) -> None:
    """Wait for the page to be loaded and its load events answered (a component waiting for one
    is covered by a translucent overlay that takes clicks)."""
    idle = "return [...document.querySelectorAll('[data-testid=status-tracker]')].every(e => e.classList.contains('hide'))"
    wait(driver, lambda d: d.find_elements(By.ID, "speak-generate") and d.execute_script(idle), 60, what="settle")


def reload(driver) -> None:
    """Load the page again. Requests the old page had in flight are aborted (the browser logs each):
    the console is checked before, and its lines from the reload itself dropped."""
    assert console_problems(driver) == []
    driver.refresh()
    settle(driver)
    time.sleep(0.5)
    driver.get_log("browser")


def console_problems(driver) -> list[str]:
    """Console warnings and errors since the last call, less KNOWN_CONSOLE_NOISE."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] in ("WARNING", "SEVERE") and not any(n in e["message"] for n in KNOWN_CONSOLE_NOISE)]


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait(driver, condition, timeout: float = 180, what: str = ""):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.3).until(lambda d: condition(d))
    except Exception:
        screenshot(driver, f"failed-{what or 'wait'}")
        raise


def open_tab(driver, label: str) -> None:
    tab = wait(driver, lambda d: next((b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                       if b.text.strip() == label), None), what=f"tab-{label}")
    tab.click()
    time.sleep(0.5)


def labelled(driver, label: str, tag: str = "input"):
    """The input (or textarea) of the component labelled `label`."""
    return driver.find_element(By.XPATH, f"//span[@data-testid='block-info'][normalize-space()='{label}']"
                                         f"/ancestor::*[contains(@class, 'block')][1]//{tag}")


def text_of(driver, elem_id: str) -> str:
    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def value_of(driver, elem_id: str) -> str:
    return driver.execute_script(
        f"const e = document.querySelector('#{elem_id} textarea, #{elem_id} input'); return e ? e.value : null")


def set_text(driver, elem_id: str, text: str) -> None:
    box = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input"),
               what=elem_id)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def choose(driver, elem_id: str, option: str) -> None:
    """Pick `option` in a dropdown from its list."""
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#{elem_id} input"), what=elem_id).click()
    item = wait(driver, lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                        if o.get_attribute("aria-label") == option), None), what=f"{elem_id}-{option}")
    item.click()
    wait(driver, lambda d: value_of(d, elem_id) == option, 10, what=f"{elem_id}-chosen")


def upload(driver, elem_id: str, *paths: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys("\n".join(map(str, paths)))


def toast(driver, containing: str) -> str:
    return wait(driver, lambda d: next((e.text for e in d.find_elements(By.CSS_SELECTOR, ".toast-body")
                                        if containing in e.text), None), 60, what="toast")


def log_follows_the_end(driver, elem_id: str) -> bool:
    return driver.execute_script(
        f"const t = document.querySelector('#{elem_id} textarea');"
        "return t.value.length > 0 && t.scrollTop + t.clientHeight >= t.scrollHeight - 4")


def queue_calls(driver) -> int:
    """Events the page has sent to the server so far (every timer tick is one)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/queue/join')).length")


def fits(driver) -> bool:
    """Nothing wider than the window: no sideways scrolling of the whole page."""
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def audio_src(driver, elem_id: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} audio")
    src = found[0].get_attribute("src") if found else None
    return src if src and src.startswith("http") else None


def audio_of(driver, elem_id: str, other_than: str | None = None) -> bytes:
    """The bytes of the file the player plays (once it plays another than `other_than`)."""
    src = wait(driver, lambda d: (lambda s: s != other_than and s)(audio_src(d, elem_id)), what=f"{elem_id}-audio")
    data = httpx.get(src, timeout=60).content
    assert data.startswith(AUDIO_MAGIC) and len(data) > 1000, data[:16]
    return data


def screenshots(driver, tab: str) -> None:
    """The tab at both widths (the page is left wide)."""
    for width in (WIDE, NARROW):
        driver.set_window_size(width, 2600)  # tall: the whole tab in one picture
        time.sleep(0.8)
        assert fits(driver), f"{tab} at {width} px scrolls sideways"
        screenshot(driver, f"{tab.lower()}-{width}px")
    driver.set_window_size(WIDE, 1800)
    time.sleep(0.3)


def espeak_recordings(folder: Path) -> list[Path]:
    """Eight 22 kHz wav files of one espeak-ng voice, one sentence each."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("the acceptance test records its speaker with espeak-ng: apt-get install espeak-ng")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sentence in enumerate(SENTENCES):
        path = folder / f"take_{i}.wav"
        subprocess.run([espeak, "-v", "en-us+f3", "-s", "150", "-w", str(path), sentence], check=True)
        paths.append(path)
    return paths


# --- the whole path, as a new user takes it ----------------------------------------------------


@pytest.mark.slow  # about 3-4 minutes here: data prep of eight recordings and the preset's 20 steps with evaluation
def test_a_new_user_trains_a_voice_speaks_stops_reproduces_and_corrects(live, page, tmp_path):
    d = page
    assert "audio is noise" in text_of(d, "model-banner"), "the embedded random model says so"

    # Adapt: eight recordings, prepared; the corpus is offered at once.
    open_tab(d, "Adapt")
    set_text(d, "adapt-corpus-name", "newcomer")
    upload(d, "adapt-files", *espeak_recordings(tmp_path / "takes"))
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#adapt-files tbody tr")) == 8, 60, what="uploads")
    d.find_element(By.ID, "adapt-prep").click()
    wait(d, lambda d: "phase: done, 8 of 8 recordings" in text_of(d, "adapt-status"), 300, what="prep-done")
    assert "kept" in text_of(d, "adapt-status") and value_of(d, "adapt-corpus") == "newcomer"
    # Train with the preset chosen for this studio, Steps untouched.
    assert value_of(d, "adapt-preset") == "tiny-cpu.yaml"
    set_text(d, "adapt-name", "newcomer-voice")
    d.find_element(By.ID, "adapt-train").click()
    seen: set[str] = set()

    def phase(d) -> str:
        text = text_of(d, "adapt-status")
        seen.add(next((line for line in text.splitlines() if line.startswith("phase:")), ""))
        return text

    wait(d, lambda d: "phase: done, 20 of 20 steps" in phase(d), 600, what="train-done")
    assert any(re.fullmatch(r"phase: step \d+ of 20, about \d+ s left", s) for s in seen), seen
    assert "adapter voice 'newcomer-voice' added" in text_of(d, "adapt-status")
    assert "(done)" in value_of(d, "adapt-job")
    assert log_follows_the_end(d, "adapt-log")
    screenshots(d, "Adapt")

    # Speak with the new adapter; the seed of the take is shown.
    open_tab(d, "Speak")
    choose(d, "speak-adapter", "newcomer-voice")
    set_text(d, "speak-script", "[S1] My new voice says hello.")
    set_text(d, "speak-seed", "")
    d.find_element(By.ID, "speak-generate").click()
    wait(d, lambda d: text_of(d, "speak-status").startswith("done"), what="adapter-take")
    seed = wait(d, lambda d: value_of(d, "speak-seed-used"), 10, what="seed-shown")
    assert f"seed {seed}" in text_of(d, "speak-status")
    first = audio_src(d, "speak-audio")
    take = audio_of(d, "speak-audio")
    # The same seed, typed back, gives the same take.
    set_text(d, "speak-seed", seed)
    d.find_element(By.ID, "speak-generate").click()
    assert audio_of(d, "speak-audio", other_than=first) == take, f"seed {seed} gave another take"
    assert value_of(d, "speak-seed-used") == seed

    # A long script, stopped mid-way: what was spoken stays, with how far it got.
    choose(d, "speak-adapter", NONE)
    long_script = " ".join(f"[S{1 + i % 2}] Line {i} of a script that goes on for quite a while." for i in range(12))
    set_text(d, "speak-script", long_script)
    max_seconds = d.find_element(By.CSS_SELECTOR, "#speak-max-seconds input[type=number]")
    max_seconds.send_keys(Keys.CONTROL, "a")
    max_seconds.send_keys("0", Keys.TAB)  # no limit: the whole script
    d.find_element(By.ID, "speak-generate").click()
    wait(d, lambda d: re.search(r"speaking: [1-9]\d* of \d+ words", text_of(d, "speak-status")), 60, what="speaking")
    assert not d.find_elements(By.CSS_SELECTOR, "#speak-audio audio"), "no stale player while a take runs"
    d.find_element(By.ID, "speak-stop").click()
    status = wait(d, lambda d: (lambda s: s.startswith("stopped") and s)(text_of(d, "speak-status")), 60, what="stop")
    spoken, total = map(int, re.search(r"stopped after (\d+) of (\d+) words", status).groups())
    assert 0 < spoken < total
    audio_of(d, "speak-audio")
    screenshots(d, "Speak")

    # Voices: a recording's transcript corrected with a split word, its times shown before saving.
    open_tab(d, "Voices")
    upload(d, "voice-recording", FIXTURES / "voice_b.flac")
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#voice-recording audio"), what="voice-uploaded")
    d.find_element(By.ID, "voice-transcribe").click()
    heard = wait(d, lambda d: value_of(d, "voice-transcript"), 120, what="transcribed").split()
    k, typed = split_longest_word(heard)
    set_text(d, "voice-transcript", " ".join(typed))
    d.find_element(By.ID, "voice-align").click()
    rows = wait(d, lambda d: (lambda r: len(r) == len(typed) and r)(table_rows(d, "voice-alignment")), 60,
                what="aligned")
    assert [r[0] for r in rows] == typed and rows[k][4] == rows[k + 1][4] == "split"
    assert float(rows[k][3]) == float(rows[k + 1][2]) and float(rows[k][2]) < float(rows[k][3]) < float(rows[k + 1][3])
    set_text(d, "voice-name", "corrected")
    d.find_element(By.ID, "voice-save").click()
    wait(d, lambda d: "saved" in text_of(d, "voice-status"), 60, what="voice-saved")
    assert [w["text"] for w in json.loads((live.voices / "corrected" / "voice.json").read_text())["prefix"]["words"]] == typed
    screenshots(d, "Voices")

    # Compare: the base and the new adapter, scores named in words.
    open_tab(d, "Compare")
    choose(d, "compare-adapter", "newcomer-voice")
    d.find_element(By.XPATH, "//label[normalize-space()='adapter']").click()
    d.find_element(By.ID, "compare-run").click()
    wait(d, lambda d: "spoke 2 configuration(s) with seed 0" in text_of(d, "compare-status"), 120, what="compare")
    assert "word error rate (lower is better)" in d.find_element(By.ID, "compare-scores").text
    screenshots(d, "Compare")


def table_rows(driver, elem_id: str) -> list[list[str]]:
    """The cells of a Dataframe's body rows (gradio draws them as ARIA grid rows, the header apart)."""
    rows = driver.execute_script(
        f"return [...document.querySelectorAll('#{elem_id} [role=row]')].map("
        "r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim()))")
    return [r for r in rows if r]


# --- one fast test per bug ---------------------------------------------------------------------


def test_type_a_script_generate_and_play_it(page):
    set_text(page, "speak-script", "[S1] Hello from the browser. [S2] Hi!")
    page.find_element(By.ID, "speak-generate").click()
    audio_of(page, "speak-audio")
    status = text_of(page, "speak-status")
    assert status.startswith("done") and "5 of 5 words" in status and value_of(page, "speak-seed-used")
    words = page.find_element(By.ID, "speak-words").text
    assert "browser." in words and "Hi!" in words
    assert not [e for e in page.find_elements(By.ID, "speak-stream") if e.is_displayed()], \
        "one player: the streamed one gives way to the whole file's"



def test_adapt_preselects_the_preset_that_fits_this_studio_and_shows_its_steps(page):
    open_tab(page, "Adapt")
    preset, steps = labelled(page, "Preset"), labelled(page, "Steps", "input[@type='number']")
    assert preset.get_attribute("value") == "tiny-cpu.yaml", "the tiny model on a CPU trains with tiny-cpu.yaml"
    assert steps.get_attribute("value") == "20", "the box shows the preset's steps, never 0"
    note = page.find_element(By.ID, "adapt-preset-note").text
    assert "tiny-cpu.yaml" in note and "CPU" in note


def test_an_error_message_keeps_text_that_looks_like_html(page, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_bytes(b"RIFF this is no audio")
    upload(page, "speak-recording-1", not_audio)
    wait(page, lambda d: value_of(d, "speak-voice-1") == RECORDING, 30, what="recording-chosen")
    page.find_element(By.ID, "speak-generate").click()
    text = toast(page, "cannot be decoded")
    assert "'<none>'" in text and "send a wav, mp3, flac, ogg or m4a recording" in text, text
    page.get_log("browser")  # the browser's own complaint about an unplayable file is not the studio's


def test_clearing_a_recording_clears_the_voice_it_chose(page):
    upload(page, "speak-recording-1", FIXTURES / "voice_a.flac")
    wait(page, lambda d: value_of(d, "speak-voice-1") == RECORDING, 30, what="recording-chosen")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#speak-recording-1 button[aria-label=Clear]"), 30)[0].click()
    wait(page, lambda d: value_of(d, "speak-voice-1") == NONE, 10, what="voice-cleared")


def test_deleting_a_voice_asks_first(live, page):
    live.studio.voices.add("to-delete", (FIXTURES / "voice_a.flac").read_bytes(), replace=True)
    reload(page)
    open_tab(page, "Voices")
    choose(page, "voice-chosen", "to-delete")
    page.find_element(By.ID, "voice-delete").click()
    confirm = wait(page, lambda d: (lambda b: b and b[0].is_displayed() and b[0])(
        d.find_elements(By.ID, "voice-delete-confirm")), 10, what="confirm")
    assert (live.voices / "to-delete").is_dir(), "nothing is deleted before the user confirms"
    assert "to-delete" in text_of(page, "voice-status")
    confirm.click()
    wait(page, lambda d: "voice 'to-delete' deleted" in text_of(d, "voice-status"), 30, what="deleted")
    assert not (live.voices / "to-delete").exists()


FAKE_PREP = """
import json, pathlib, sys, time
corpus = pathlib.Path(sys.argv[1])
for i in range(300):
    print(f"log line {i}", flush=True)
time.sleep(6)
corpus.mkdir(parents=True, exist_ok=True)
report = {"files": {"found": 3, "kept": 3, "skipped": 0, "without_utterances": 0},
          "utterances": {"kept": 4, "skipped": 1, "train": 4}, "hours": {"input": 0.0107, "kept": 0.0099},
          "skipped_by_reason": {"too_short": 1}}
(corpus / "qc_report.json").write_text(json.dumps(report))
(corpus / "qc_report.txt").write_text("dia2-prep QC report")
(corpus / "corpus_meta.json").write_text("{}")
"""
"""A stand-in for data prep (the acceptance test runs the real one): 300 log lines, then a corpus."""


def test_a_job_that_ends_shows_its_status_corpus_figures_and_latest_log_lines(live, page):
    corpus = live.work / "corpora" / "fake-prep" / "corpus"
    writes = {"progress": str(corpus / "progress.json"), "qc_report": str(corpus / "qc_report.json"),
              "qc_text": str(corpus / "qc_report.txt")}  # what data prep's check names
    job = live.studio.jobs.start("prep", "prepare 'fake-prep'", [sys.executable, "-c", FAKE_PREP, str(corpus)],
                                 details={"name": "fake-prep", "output": str(corpus), "writes": writes})
    reload(page)  # the page finds the running job
    open_tab(page, "Adapt")
    wait(page, lambda d: "(running)" in (value_of(d, "adapt-job") or ""), 30, what="job-running")
    wait(page, lambda d: "(done)" in value_of(d, "adapt-job"), 60, what="job-label-done")
    wait(page, lambda d: value_of(d, "adapt-corpus") == "fake-prep", 10, what="corpus-offered")
    # The status follows once the studio has handled the finished job (it says "finishing" until then).
    wait(page, lambda d: "35.6 s kept of 38.5 s read" in text_of(d, "adapt-status"), 30, what="qc-figures")
    assert "log line 299" in value_of(page, "adapt-log") and log_follows_the_end(page, "adapt-log")
    assert live.studio.jobs.get(job.id).status == "done"
    reload(page)
    open_tab(page, "Adapt")
    labelled(page, "Prepared corpus").click()
    wait(page, lambda d: any(o.get_attribute("aria-label") == "fake-prep" for o in
                             d.find_elements(By.CSS_SELECTOR, "[role=option]")), 10, what="corpus-after-reload")


def test_the_adapt_tab_is_quiet_when_nothing_runs(live, page):
    assert not [j for j in live.studio.jobs.list() if j.status == "running"]
    open_tab(page, "Adapt")
    time.sleep(1.0)
    before = queue_calls(page)
    time.sleep(2.5)  # the job timer ticks every second: a polling page sends 2 or 3 events meanwhile
    assert queue_calls(page) == before, "no polling while no job runs"
    screenshot(page, "adapt-idle")
    # The page fixture then checks the console: the empty loss plot warns of nothing.
