"""A real browser on the Space: headless Debian Chromium driven by Playwright.

Loads the page, picks a preset, presses Generate, sees text stream in, presses Stop, and keeps
a screenshot in tests/artifacts/. `.ci/run` installs chromium; without it this test fails,
it is never skipped."""
import os
import re
import shutil
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import ARTIFACTS
from serve import running_app

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(tiny_dir):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(tiny_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.goto(url)
        pg.wait_for_selector("#generate", timeout=30_000)
        yield pg
        browser.close()


def output_text(pg) -> str:
    return pg.locator("#output textarea").input_value()


def test_pick_preset_generate_stream_and_stop(page):
    # pick the history-lesson preset: prompt and settings follow
    page.locator("#preset input").click()
    page.get_by_role("option", name="History lesson").click()
    expect(page.locator("#prompt textarea")).to_have_value(
        "### Lesson: The Rise and Fall of the Roman Empire\n### Introduction\n", timeout=10_000)

    # use the whole context so the run lasts long enough to watch and stop it
    box = page.locator("input[aria-label='number input for Max new tokens']")
    box.fill("480")
    box.press("Enter")

    page.click("#generate")
    prompt = "### Lesson: The Rise and Fall of the Roman Empire\n### Introduction\n"
    page.wait_for_function(
        "p => { const t = document.querySelector('#output textarea'); return t && t.value.length > p.length; }",
        arg=prompt, timeout=30_000)
    first = output_text(page)
    time.sleep(0.4)
    second = output_text(page)
    assert first.startswith(prompt) and second.startswith(first) and len(second) > len(first)  # it streams

    page.click("#stop")
    expect(page.locator("#status")).to_contain_text("stopped", timeout=10_000)
    time.sleep(1.0)
    frozen = output_text(page)
    time.sleep(1.0)
    assert output_text(page) == frozen                       # nothing arrives after Stop
    status = page.locator("#status").inner_text()
    assert "Seed" in status and "tokens/s" in status
    page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)

    # one click puts the run's seed into the settings (the Advanced panel holds the field)
    seed = re.search(r"Seed (\d+)", status)[1]
    page.click("#reuse-seed")
    page.get_by_text("Advanced").click()
    expect(page.locator("#seed input")).to_have_value(seed, timeout=10_000)

    # the worker is free again: the next Generate runs
    box.fill("20")
    box.press("Enter")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("max new tokens reached", timeout=30_000)
    assert output_text(page) != frozen
