"""The Score tab in a real browser on the bundled nano: the text coloured by rank, the perplexity,
the most surprising tokens, and the logit lens of a selected token; at desktop and phone width."""
import pytest
from playwright.sync_api import expect

from browser import WAIT, browser_on, open_page
from conftest import ARTIFACTS, ROOT


@pytest.fixture(scope="module")
def site():
    with browser_on(ROOT / "models" / "nucleus-nano") as site:
        yield site


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_score_a_text_and_open_the_lens(site, width, height):
    page = open_page(site, width, height)
    page.get_by_role("tab", name="Score").click()
    page.locator("#score-text textarea").fill("### Recipe: Soup\n### Ingredients\n- 2 onions\n- <b>water</b>")
    page.locator("#score-run").click()
    expect(page.locator("#score-summary")).to_contain_text("Perplexity", timeout=WAIT)
    chips = page.locator("#score-tokens .token.highlighted")
    expect(chips.first).to_be_visible()
    shown = "".join(chips.all_inner_texts())
    assert "<b>water</b>" in shown and "onions" in shown                          # the text as written, not HTML
    rows = page.locator("#score-surprising [role=grid]")
    expect(rows).to_have_attribute("aria-rowcount", "11", timeout=WAIT)            # ten tokens and the header
    chips.nth(3).click()
    expect(page.locator("#lens-summary")).to_contain_text("Logit lens for token 3", timeout=WAIT)
    expect(page.locator("#lens-table [role=grid]")).to_have_attribute("aria-rowcount", "6")   # embeddings + 4 layers
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(ARTIFACTS / f"score-{width}.png"), full_page=True)


def test_bad_text_is_refused_and_the_page_still_scores(site):
    page = open_page(site)
    page.get_by_role("tab", name="Score").click()
    page.locator("#score-text textarea").fill("   ")
    page.locator("#score-run").click()
    expect(page.locator("#score-summary")).to_contain_text("⚠️ text: give some text to score", timeout=WAIT)
    page.locator("#score-text textarea").fill("Hello there.")
    page.locator("#score-run").click()
    expect(page.locator("#score-summary")).to_contain_text("Perplexity", timeout=WAIT)
