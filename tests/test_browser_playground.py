"""The playground's tools in a real browser: token view and inspector, compare, share links,
Continue / Regenerate / Undo, the prompt meter and the code panel. Screenshots go to
tests/artifacts/. Waits are for states, never for durations."""
import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from browser import WAIT, browser_on, open_page, output_text, run_to_end, seed_of, set_max_new, set_seed
from conftest import ARTIFACTS
from nucleus.loading import BUNDLED_MODEL


@pytest.fixture(scope="module")
def site():
    """The bundled Nucleus-Nano: trained, so its distributions have the peaks that sampling cuts."""
    with browser_on(BUNDLED_MODEL) as site:
        yield site


def set_prompt(pg, text):
    box = pg.locator("#prompt textarea")
    box.fill(text)
    expect(box).to_have_value(text)


def set_slider(pg, label, value):
    box = pg.locator(f"input[aria-label='number input for {label}']")
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value))


def test_token_view_shows_candidates_and_the_top_p_cut(site):
    page = open_page(site)
    set_prompt(page, "### Recipe: Soup\n### Ingredients\n")
    set_slider(page, "Top-p", 0.5)
    set_seed(page, 3)
    run_to_end(page, 12)
    chips = page.locator("#tokens .token.highlighted")        # (a token that is only a newline has no chip)
    expect(chips.first).to_be_visible(timeout=WAIT)
    summary, cut_shown, seen = page.locator("#inspect-summary"), False, set()
    expect(summary).to_contain_text("Select a token above to see its candidates", timeout=WAIT)   # run is over
    previous = summary.inner_text()
    for i in range(chips.count()):                            # a step where top-p cut some of the top ten
        chips.nth(i).click()
        page.wait_for_function(                                   # every chip is another step
            "p => { const t = document.querySelector('#inspect-summary').innerText;"
            " return t !== p && /Token \\d+,/.test(t); }", arg=previous, timeout=WAIT)
        previous = summary.inner_text()
        seen.add(re.search(r"Token (\d+),", previous)[1])
        expect(summary).to_contain_text("was drawn with probability")
        expect(summary).to_contain_text(re.compile(r"Top-p removed [\d,]+ of the 32,000-token vocabulary"))
        rows = int(page.locator("#inspect-table [role=grid]").get_attribute("aria-rowcount")) - 1   # no header
        table = page.locator("#inspect-table").inner_text()
        assert rows >= 10 and "✔ chosen" in table
        if "removed by top-p" in table:
            cut_shown = True
            break
    assert cut_shown and len(seen) == i + 1                   # each chip inspected its own step
    page.screenshot(path=str(ARTIFACTS / "token-view.png"), full_page=True)


def test_prompt_meter_counts_tokens_and_warns(site, tiny_lm):   # same tokenizer as the nano
    page = open_page(site)
    text = "Once upon a time, a small fox found a red ball in the snow."
    set_prompt(page, text)
    n = len(tiny_lm.tokenizer(text).input_ids)                 # counted here, with <s>
    meter = page.locator("#meter")
    expect(meter).to_contain_text(f"Prompt: {n} tokens of the model's 512-token context", timeout=WAIT)
    set_max_new(page, 100)
    expect(meter).to_contain_text(f"leaves {512 - n} new tokens (max new tokens: 100)")
    set_max_new(page, 511)
    expect(meter).to_contain_text(f"leaves {512 - n} new tokens, so max new tokens (511) will be lowered to {512 - n}")
    set_prompt(page, "a " * 600)
    expect(meter).to_contain_text("longer than the context: its oldest tokens will be cut", timeout=WAIT)
    page.screenshot(path=str(ARTIFACTS / "prompt-meter.png"))


def test_continue_regenerate_undo(site):
    page = open_page(site)
    start = "Once upon a time,"
    set_prompt(page, start)
    set_seed(page, 11)
    first, status1 = run_to_end(page, 10)
    assert first.startswith(start)
    second, _ = run_to_end(page, 11, "#continue")             # the whole text became the prompt
    expect(page.locator("#prompt textarea")).to_have_value(first)
    assert second.startswith(first) and len(second) > len(first)
    page.screenshot(path=str(ARTIFACTS / "continue.png"), full_page=True)
    page.click("#undo")                                       # back to before Continue
    expect(page.locator("#prompt textarea")).to_have_value(start, timeout=WAIT)
    expect(page.locator("#output textarea")).to_have_value(first)
    page.click("#undo")                                       # and before the first Generate
    expect(page.locator("#output textarea")).to_have_value("", timeout=WAIT)
    page.click("#undo")
    expect(page.locator("#status")).to_contain_text("Nothing to undo", timeout=WAIT)
    third, status3 = run_to_end(page, 12, "#regenerate")     # a new seed, whatever the seed box says
    assert third.startswith(start) and seed_of(status3) != seed_of(status1)


def test_compare_shows_two_columns(site):
    page = open_page(site)
    set_prompt(page, "### Lesson: Bees\n### Introduction\n")
    set_seed(page, 5)
    set_max_new(page, 15)
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-run")
    status = page.locator("#compare-status")
    expect(status).to_contain_text(re.compile(r"B: .*temperature 1 · .* · 15 tokens .* max new tokens reached"),
                                   timeout=WAIT)
    a = page.locator("#out-a textarea").input_value()
    b = page.locator("#out-b textarea").input_value()
    assert a.startswith("### Lesson: Bees") and b.startswith("### Lesson: Bees") and a != b
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)


def test_share_link_reproduces_the_run_in_a_fresh_browser(site):
    page = open_page(site)
    set_prompt(page, "### Recipe: Pancakes\n")
    set_slider(page, "Temperature", 0.9)
    set_slider(page, "Repetition penalty", 1.2)
    text, status = run_to_end(page, 14)                       # random seed: the link must carry it
    page.get_by_role("tab", name="Share & code").click()
    page.click("#share-make")
    link_box = page.locator("#share-link textarea, #share-link input").first
    expect(link_box).to_have_value(re.compile(r"^http://.*\?prompt="), timeout=WAIT)
    link = link_box.input_value()
    assert f"seed={seed_of(status)}" in link
    code = page.locator("#code-python").inner_text()
    assert "GenerationConfig(" in code and f"torch.manual_seed({seed_of(status)})" in code

    browser, _ = site
    fresh = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    fresh.goto(link)
    expect(fresh.locator("#prompt textarea")).to_have_value("### Recipe: Pancakes\n", timeout=WAIT)
    expect(fresh.locator("input[aria-label='number input for Temperature']")).to_have_value("0.9")
    fresh.click("#generate")
    tokens_and_reason = re.search(r"· (\d+ tokens? · ).*( · [a-z ]+)$", status.strip())   # however the run ended
    expect(fresh.locator("#status")).to_contain_text(re.compile(
        rf"Seed {seed_of(status)} · {tokens_and_reason[1]}.*{tokens_and_reason[2]}"), timeout=WAIT)
    assert output_text(fresh) == text
    fresh.screenshot(path=str(ARTIFACTS / "share-link.png"), full_page=True)


def test_bad_link_values_are_ignored_with_a_note(site):
    page = open_page(site, query="?prompt=Hello&temperature=9&top_k=abc&max_new_tokens=7")
    expect(page.locator("#link-note")).to_contain_text("Ignored from the link", timeout=WAIT)
    note = page.locator("#link-note").inner_text()
    assert "temperature" in note and "top_k" in note
    expect(page.locator("#prompt textarea")).to_have_value("Hello")
    expect(page.locator("input[aria-label='number input for Max new tokens']")).to_have_value("7")
    expect(page.locator("input[aria-label='number input for Temperature']")).not_to_have_value("9")


def test_the_printed_transformers_code_gives_the_pages_text(site, tmp_path):
    page = open_page(site)
    set_prompt(page, "### Lesson: Clouds\n")
    set_seed(page, 21)
    set_slider(page, "Top-p", 0.8)
    text, _ = run_to_end(page, 16)
    page.get_by_role("tab", name="Share & code").click()
    code_box = page.locator("#code-python .cm-content")
    expect(code_box).to_contain_text("torch.manual_seed(21)", timeout=WAIT)
    lines = code_box.locator(".cm-line").all_inner_texts()
    script = tmp_path / "repeat.py"
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == text.rstrip("\n")
    page.screenshot(path=str(ARTIFACTS / "view-code.png"), full_page=True)
    # the same seeded run through the API gives the page's text
    from gradio_client import Client

    api = Client(site[1], verbose=False).predict("### Lesson: Clouds\n", temperature=0.7, top_p=0.8, top_k=0,
                                                 min_p=0.0, repetition_penalty=1.5, max_new_tokens=16, seed=21,
                                                 api_name="/generate")
    assert "### Lesson: Clouds\n" + api["text"] == text


def test_a_link_to_a_preset_applies_it_and_out_of_range_values_are_named(site):
    page = open_page(site, query="?preset=greedy&top_p=0.005&max_new_tokens=4096&stop=a&stop=b&stop=c&stop=d&stop=e")
    expect(page.locator("#prompt textarea")).to_have_value("### Lesson: The Water Cycle\n### Introduction\n",
                                                           timeout=WAIT)
    expect(page.locator("input[aria-label='number input for Temperature']")).to_have_value("0")
    note = page.locator("#link-note")
    expect(note).to_contain_text("Ignored from the link", timeout=WAIT)
    text = note.inner_text()
    assert "top_p=0.005 (outside this page's range, 0.01 to 1)" in text
    assert "max_new_tokens=4096 (outside this page's range, 1 to 511)" in text and "at most 4 stop strings" in text
    expect(page.locator("input[aria-label='number input for Max new tokens']")).to_have_value("200")   # the preset's


def test_a_refused_value_leaves_the_last_result_in_place(site):
    page = open_page(site)
    set_seed(page, "7")      # a seed whose 6 tokens include visible text (a random one may write only newlines)
    text, status = run_to_end(page, 6)
    expect(page.locator("#tokens .token.highlighted").first).to_be_visible()
    set_seed(page, "1e3")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("seed: expected a whole number", timeout=WAIT)
    assert output_text(page) == text
    expect(page.locator("#tokens .token.highlighted").first).to_be_visible()     # the token view is still there


def test_a_value_typed_past_a_sliders_range_is_named_with_the_value_used(site):
    page = open_page(site)
    note = page.locator("#range-note")
    box = page.locator("input[aria-label='number input for Temperature']")
    box.fill("5")
    box.press("Tab")
    expect(note).to_contain_text("Temperature 5 is outside this page's range (0 to 2): 2 is used.", timeout=WAIT)
    expect(box).to_have_value("2")
    box = page.locator("input[aria-label='number input for Max new tokens']")
    box.fill("100000")
    box.press("Tab")
    expect(note).to_contain_text("Max new tokens 100000 is outside this page's range (1 to 511): 511 is used",
                                 timeout=WAIT)
    box.fill("20")
    box.press("Tab")
    expect(note).not_to_contain_text("outside", timeout=WAIT)          # a value in range clears the note
    run_to_end(page, 20)                                              # the page still runs
    port = site[1].rstrip("/").rsplit(":", 1)[1]
    assert "Traceback" not in (ARTIFACTS / f"app-{port}.log").read_text()   # no bare "Error" from the slider
