"""Untrusted text in a real browser: HTML in the prompt, in a share link and in generated text
(a tiny model steered to write it) shows literally, and nothing in it runs."""
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from browser import WAIT, browser_on, open_page, run_to_end
from conftest import ARTIFACTS, write_parrot_checkpoint

GENERATED = "<svg onload=alert(1)>"          # what the steered model writes after "Go"
PROMPT = "Go <img src=x onerror=alert(2)><script>alert(3)</script> Go"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = write_parrot_checkpoint(tmp_path_factory.mktemp("parrot") / "parrot", "Go", GENERATED)
    with browser_on(folder) as site:
        yield site


def watch(page) -> list[str]:
    """Every dialog an injected alert() would open; playwright would otherwise dismiss it unseen."""
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return dialogs


def test_html_in_prompt_and_generated_text_stays_text(site):
    page = open_page(site)
    dialogs = watch(page)
    page.locator("#prompt textarea").fill(PROMPT)
    text, _ = run_to_end(page, 9)
    assert text == PROMPT + " " + GENERATED                  # the model wrote the payload
    tokens = page.locator("#tokens")
    expect(tokens).to_contain_text("<img src=x onerror=alert(2)>", timeout=WAIT)
    expect(tokens).to_contain_text("<script>alert(3)</script>")
    for view in ("Markdown", "Plain text", "Tokens"):
        page.locator("#view").get_by_text(view, exact=True).click()
    rendered = page.locator("#rendered").inner_text()
    assert "<svg onload=alert(1)>" in rendered and "<script>alert(3)</script>" in rendered
    page.locator("#tokens .token.highlighted").first.click()   # the inspector shows token texts too
    expect(page.locator("#inspect-summary")).to_contain_text("Token 1,", timeout=WAIT)
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-run")
    expect(page.locator("#out-b textarea")).to_have_value(PROMPT + " " + GENERATED, timeout=WAIT)
    assert page.locator("#tokens svg[onload], #rendered svg, #rendered img, img[src='x']").count() == 0
    assert dialogs == []
    page.screenshot(path=str(ARTIFACTS / "untrusted.png"), full_page=True)


def test_html_in_a_share_link_stays_text(site):
    page = open_page(site, query=f"?prompt={quote(PROMPT)}&temperature={quote('<b>1</b>')}&model={quote(GENERATED)}")
    dialogs = watch(page)
    expect(page.locator("#prompt textarea")).to_have_value(PROMPT, timeout=WAIT)
    note = page.locator("#link-note")
    expect(note).to_contain_text("Ignored from the link", timeout=WAIT)
    assert "<b>1</b>" in note.inner_text() and "<svg onload" in note.inner_text()
    assert page.locator("#link-note b, #link-note svg").count() == 0
    run_to_end(page, 9)
    assert dialogs == []
