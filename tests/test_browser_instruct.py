"""The Instruct tab in a real browser, on a tiny chat model steered to give one known reply (so the
page's text is checked against a string written here, not against the code's own output)."""
import pytest
from playwright.sync_api import expect

from browser import WAIT, browser_on, open_page
from conftest import ARTIFACTS, write_parrot_checkpoint

REPLY = "Bread is baked <svg onload=alert(1)> dough"     # untrusted markup inside the reply, too


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from nucleus.tokenizer import load_tokenizer
    from train.chat import CHAT_TEMPLATE

    # the parrot continues the template's last token, "]" of [/INST], with " " + REPLY, then </s>
    folder = write_parrot_checkpoint(tmp_path_factory.mktemp("chat") / "parrot-chat", "[/INST]", " " + REPLY)
    tok = load_tokenizer(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    with browser_on(folder) as site:
        yield site


def send(page, message: str):
    page.locator("#message textarea").fill(message)
    page.locator("#send").click()
    expect(page.locator("#message textarea")).to_have_value("", timeout=WAIT)    # the run's last update clears it
    expect(page.locator("#send")).to_be_enabled(timeout=WAIT)


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)])
def test_a_conversation_with_the_template_the_tokens_and_the_inspector(site, width, height):
    page = open_page(site, width, height)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.get_by_role("tab", name="Instruct").click()
    expect(page.locator("#chat-note")).to_contain_text("chat template", timeout=WAIT)
    page.locator("#system textarea").fill("Be brief.")
    send(page, "What is bread?")
    chat = page.locator("#chatbot")
    expect(chat).to_contain_text("What is bread?")
    expect(chat).to_contain_text(REPLY)              # the markup shows as typed
    expect(page.locator("#chat-status")).to_contain_text("end of text")
    page.locator("#chat-template-box").click()
    template = page.locator("#chat-template textarea")
    expect(template).to_have_value("<s>[INST] Be brief.\n\nWhat is bread? [/INST]")
    chips = page.locator("#chat-tokens .token.highlighted")
    expect(chips.first).to_be_visible()
    assert "".join(chips.all_inner_texts()).replace(" ", "") == REPLY.replace(" ", "")
    chips.first.click()
    expect(page.locator("#chat-inspect-summary")).to_contain_text("was drawn with probability", timeout=WAIT)
    # a second message: the first exchange is in the template, its reply closed by </s>
    send(page, "And butter?")
    expect(template).to_have_value(f"<s>[INST] Be brief.\n\nWhat is bread? [/INST] {REPLY}</s>[INST] And butter? [/INST]")
    assert chat.get_by_text(REPLY).count() == 2
    assert page.locator("svg[onload]").count() == 0 and not dialogs            # the markup never ran
    assert page.evaluate("document.documentElement.scrollWidth") <= width        # nothing wider than the screen
    page.screenshot(path=str(ARTIFACTS / f"instruct-{width}.png"), full_page=True)
    page.locator("#chat-clear").click()
    expect(chat).not_to_contain_text("What is bread?", timeout=WAIT)
    expect(template).to_have_value("")


def test_a_base_model_is_refused_in_the_status_line(site):
    page = open_page(site)
    page.get_by_role("tab", name="Instruct").click()
    page.locator("#model input").fill("nucleus-nano")
    page.locator("#model input").press("Enter")
    expect(page.locator("#chat-note")).to_contain_text("nucleus-nano is a base model", timeout=WAIT)
    page.locator("#send").click()
    expect(page.locator("#chat-status")).to_contain_text("⚠️ messages: nucleus-nano is a base model with no chat "
                                                         "template", timeout=WAIT)
    expect(page.locator("#send")).to_be_enabled(timeout=WAIT)
    assert page.locator("#chatbot").get_by_text("Why do leaves").count() == 0    # nothing was added
