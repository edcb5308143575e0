"""Shared pieces of the browser tests: Debian's Chromium driven by Playwright, never a download.

Every wait is for a state the page must reach (a status text, a token count), never a duration."""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager

from playwright.sync_api import expect, sync_playwright

from conftest import ARTIFACTS
from serve import running_app

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
WAIT = 60_000   # ms: generous, for a loaded machine; a pass never depends on it


@contextmanager
def browser_on(model_dir, **env):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(model_dir, **env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser, url
        finally:
            browser.close()


def open_page(site, width=1280, height=1000, query: str = ""):
    browser, url = site
    pg = browser.new_context(viewport={"width": width, "height": height}).new_page()
    pg.goto(url + query)
    pg.wait_for_selector("#generate", timeout=WAIT)
    return pg


def output_text(pg) -> str:
    """The plain-text result (the Plain text view's textbox, present even while another view shows)."""
    return pg.locator("#output textarea").input_value()


def fill_kept(box, value: str, tries: int = 3):
    """Type into a box until the page keeps the value: a box inside an accordion that has just opened
    can be mounted again right after the first keystrokes, which drops them."""
    for attempt in range(tries):
        box.fill(value)
        box.press("Tab")
        try:
            expect(box).to_have_value(value, timeout=5_000)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def set_seed(pg, seed):
    if not pg.locator("#seed").is_visible():
        pg.get_by_text("Advanced").click()
    fill_kept(pg.locator("#seed input, #seed textarea").first, str(seed))


def set_max_new(pg, n: int):
    box = pg.locator("input[aria-label='number input for Max new tokens']")
    # a value above the slider's top shows in the box for a moment, then the page puts the old one back
    assert n <= int(box.get_attribute("max")), f"max new tokens {n} is above the slider's {box.get_attribute('max')}"
    # typed right after a preset was chosen, on a loaded machine, the box once went back to the preset's
    # value within the moment and stayed there (1 run in 12): type until the page keeps it
    fill_kept(box, str(n))


FINAL = r"· (\d+) tokens? · [\d.]+ tokens/s · (max new tokens reached|end of text|stop string found)"


def run_to_end(pg, n: int, button: str = "#generate") -> tuple[str, str]:
    """Generate up to n tokens; wait for THIS run's final status (a new status text that ends the run;
    the model may end the text before n tokens); (text, status)."""
    set_max_new(pg, n)
    before = status_text(pg)
    pg.click(button)
    pg.wait_for_function(f"([before, final]) => {{ const t = {STATUS_JS};"
                         " return t !== before && new RegExp(final).test(t); }", arg=[before, FINAL], timeout=WAIT)
    return output_text(pg), status_text(pg)


# The status line's own text: its Markdown body, without the progress overlay ("0.0s") that Gradio
# lays over it while an event runs, which would make the last run's status look new.
STATUS_JS = "((document.querySelector('#status .prose') || {}).innerText || '').trim()"


def status_text(pg) -> str:
    return pg.evaluate(f"() => {STATUS_JS}")


def stop_now(pg):
    """Press Stop while text streams in. force: a page that re-renders every token may never hold the
    button still for the two frames Playwright waits for on a loaded machine; a person clicks anyway."""
    pg.locator("#stop").click(force=True)


def seed_of(status: str) -> str:
    return re.search(r"Seed (\d+)", status)[1]
