"""A real browser on the Space: headless Debian Chromium driven by Playwright.

Loads the page, picks a preset, presses Generate, sees text stream in, presses Stop, checks the
seed field and same-seed runs, and a second visitor; keeps screenshots in tests/artifacts/.
`.ci/run` installs chromium; without it this test fails, it is never skipped.

No check here depends on timing: every wait is for a state the page must reach (a status text,
a token count), never for a duration, and runs that are compared differ in their token count so
the page shows which run a status belongs to.
"""
import os
import re
import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import ARTIFACTS
from serve import running_app

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
HISTORY = "### Lesson: The Rise and Fall of the Roman Empire\n### Introduction\n"
WAIT = 60_000   # ms: generous, for a loaded machine; a pass never depends on it


@pytest.fixture(scope="module")
def site(long_dir):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(long_dir) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser, url
        browser.close()


def open_page(site, width=1280, height=1000):
    browser, url = site
    pg = browser.new_context(viewport={"width": width, "height": height}).new_page()
    pg.goto(url)
    pg.wait_for_selector("#generate", timeout=WAIT)
    return pg


def output_text(pg) -> str:
    return pg.locator("#output textarea").input_value()


def set_max_new(pg, n: int):
    box = pg.locator("input[aria-label='number input for Max new tokens']")
    box.fill(str(n))
    box.press("Enter")
    expect(box).to_have_value(str(n))


def run_to_end(pg, n: int) -> tuple[str, str]:
    """Generate n tokens; wait for this run's final status (it names n tokens); (text, status)."""
    set_max_new(pg, n)
    pg.click("#generate")
    status = pg.locator("#status")
    expect(status).to_contain_text(re.compile(rf"· {n} tokens · .* · max new tokens reached"), timeout=WAIT)
    return output_text(pg), status.inner_text()


def test_stream_and_stop(site):
    page = open_page(site)
    page.locator("#preset input").click()
    page.get_by_role("option", name="History lesson").click()
    expect(page.locator("#prompt textarea")).to_have_value(HISTORY, timeout=10_000)
    set_max_new(page, 480)          # the whole context: long enough to watch and stop

    page.click("#generate")
    page.wait_for_function(
        "p => { const t = document.querySelector('#output textarea'); return t && t.value.length > p.length; }",
        arg=HISTORY, timeout=WAIT)
    first = output_text(page)
    page.wait_for_function("n => document.querySelector('#output textarea').value.length > n",
                           arg=len(first), timeout=WAIT)
    second = output_text(page)
    assert first.startswith(HISTORY) and second.startswith(first)          # it streams, prompt kept whole

    page.click("#stop")
    status = page.locator("#status")
    expect(status).to_contain_text("stopped", timeout=WAIT)                # the run writes its own final status
    frozen, final = output_text(page), status.inner_text()
    tokens = int(re.search(r"(\d+) tokens ·", final)[1])
    assert tokens < 480 and "Seed" in final and "tokens/s" in final
    # nothing arrives after Stop: the final status is the last update the run sends
    page.wait_for_timeout(500)
    assert output_text(page) == frozen and status.inner_text() == final
    page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)

    # one click puts the run's seed into the seed field
    seed = re.search(r"Seed (\d+)", final)[1]
    page.click("#reuse-seed")
    page.get_by_text("Advanced").click()
    expect(page.locator("#seed input, #seed textarea").first).to_have_value(seed, timeout=10_000)

    # the worker is free again, and the same seed gives the same text (20 tokens, then 21)
    a, _ = run_to_end(page, 20)
    b, status_b = run_to_end(page, 21)
    assert f"Seed {seed}" in status_b and b.startswith(a) and len(b) > len(a)


def test_an_empty_seed_stays_empty_and_each_run_draws_a_new_one(site):
    page = open_page(site)
    page.get_by_text("Advanced").click()
    seed_box = page.locator("#seed input, #seed textarea").first
    expect(seed_box).to_have_value("", timeout=10_000)                     # not 0
    _, s1 = run_to_end(page, 5)
    _, s2 = run_to_end(page, 6)
    expect(seed_box).to_have_value("")
    assert re.search(r"Seed (\d+)", s1)[1] != re.search(r"Seed (\d+)", s2)[1]


def test_stop_reaches_a_queued_run_and_spares_the_other_visitor(site):
    busy, waiting = open_page(site), open_page(site)
    set_max_new(busy, 4000)                                                # far longer than this test
    busy.click("#generate")
    grows = "n => document.querySelector('#output textarea').value.length > n"
    busy.wait_for_function(grows, arg=len(output_text(busy)), timeout=WAIT)   # visitor 1 is generating
    waiting.click("#generate")                                             # visitor 2 queues behind it
    waiting.click("#stop")
    busy.wait_for_function(grows, arg=len(output_text(busy)), timeout=WAIT)   # visitor 2's Stop spared visitor 1
    expect(busy.locator("#status")).to_contain_text("generating", timeout=WAIT)
    busy.click("#stop")
    expect(busy.locator("#status")).to_contain_text("stopped", timeout=WAIT)
    expect(waiting.locator("#status")).to_contain_text("Stopped before it started", timeout=WAIT)
    assert output_text(waiting) == ""                                      # it never ran


def test_phone_width_screenshot(site):
    page = open_page(site, 390, 844)
    _, status = run_to_end(page, 12)
    assert "12 tokens" in status
    page.screenshot(path=str(ARTIFACTS / "space-phone.png"), full_page=True)
