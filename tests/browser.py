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


def set_max_new(pg, n: int):
    box = pg.locator("input[aria-label='number input for Max new tokens']")
    box.fill(str(n))
    box.press("Enter")
    expect(box).to_have_value(str(n))


def run_to_end(pg, n: int, button: str = "#generate") -> tuple[str, str]:
    """Generate up to n tokens; wait for this run's final status (it names n tokens); (text, status)."""
    set_max_new(pg, n)
    pg.click(button)
    status = pg.locator("#status")
    expect(status).to_contain_text(re.compile(rf"· {n} tokens · .* · max new tokens reached"), timeout=WAIT)
    return output_text(pg), status.inner_text()


def seed_of(status: str) -> str:
    return re.search(r"Seed (\d+)", status)[1]
