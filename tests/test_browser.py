"""A real browser on the Space: headless Debian Chromium driven by Playwright.

Loads the page, picks a preset, presses Generate, sees text stream in, presses Stop, checks the
seed field and same-seed runs, and a second visitor; keeps screenshots in tests/artifacts/.
`.ci/run` installs chromium; without it this test fails, it is never skipped.

No check here depends on timing: every wait is for a state the page must reach (a status text,
a token count), never for a duration, and runs that are compared differ in their token count so
the page shows which run a status belongs to.
"""
import re

import pytest
from playwright.sync_api import expect

from browser import WAIT, browser_on, open_page, output_text, run_to_end, set_max_new, set_seed, stop_now
from conftest import ARTIFACTS

HISTORY = "### Lesson: The Rise and Fall of the Roman Empire\n### Introduction\n"


@pytest.fixture(scope="module")
def site(long_dir):
    with browser_on(long_dir, NUCLEUS_MAX_SECONDS="900") as site:   # runs end by Stop, not by the time limit
        yield site


def test_stream_and_stop(site):
    page = open_page(site)
    page.locator("#preset input").click()
    page.get_by_role("option", name="History lesson").click()
    expect(page.locator("#prompt textarea")).to_have_value(HISTORY, timeout=10_000)
    expect(page.locator("input[aria-label='number input for Max new tokens']")).to_have_value("300")  # preset's
    set_max_new(page, 4096)         # the slider's top; far longer than the page can lag behind (a Stop must land)

    page.click("#generate")
    page.wait_for_function(
        "p => { const t = document.querySelector('#output textarea'); return t && t.value.length > p.length; }",
        arg=HISTORY, timeout=WAIT)
    first = output_text(page)
    page.wait_for_function("n => document.querySelector('#output textarea').value.length > n",
                           arg=len(first), timeout=WAIT)
    second = output_text(page)
    assert first.startswith(HISTORY) and second.startswith(first)          # it streams, prompt kept whole

    stop_now(page)
    status = page.locator("#status")
    expect(status).to_contain_text("stopped", timeout=WAIT)                # the run writes its own final status
    frozen, final = output_text(page), status.inner_text()
    tokens = int(re.search(r"(\d+) tokens ·", final)[1])
    assert tokens < 4096 and "Seed" in final and "tokens/s" in final
    # nothing arrives after Stop: the final status is the last update the run sends
    page.wait_for_timeout(500)
    assert output_text(page) == frozen and status.inner_text() == final
    page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)

    # one click, beside the seed field, puts the run's seed into it
    seed = re.search(r"Seed (\d+)", final)[1]
    page.get_by_text("Advanced").click()
    page.click("#reuse-seed")
    expect(page.locator("#seed input, #seed textarea").first).to_have_value(seed, timeout=10_000)

    # the worker is free again, and the same seed gives the same text (20 tokens, then 21)
    a, status_a = run_to_end(page, 20)
    b, status_b = run_to_end(page, 21)
    # (one token more, unless the model ended the text within 20: the seed was drawn at random)
    assert f"Seed {seed}" in status_b and b.startswith(a) and (len(b) > len(a) or "end of text" in status_a)


def test_an_empty_seed_stays_empty_and_each_run_draws_a_new_one(site):
    page = open_page(site)
    page.get_by_text("Advanced").click()
    seed_box = page.locator("#seed input, #seed textarea").first
    expect(seed_box).to_have_value("", timeout=10_000)                     # not 0
    expect(page.locator("#reuse-seed")).to_be_hidden()                     # shown only after a run
    _, s1 = run_to_end(page, 5)
    _, s2 = run_to_end(page, 6)
    expect(seed_box).to_have_value("")
    expect(page.locator("#reuse-seed")).to_be_visible()
    assert re.search(r"Seed (\d+)", s1)[1] != re.search(r"Seed (\d+)", s2)[1]


def test_stop_reaches_a_queued_run_and_spares_the_other_visitor(site):
    busy, waiting = open_page(site), open_page(site)
    set_max_new(busy, 4000)                                                # far longer than this test
    busy.click("#generate")
    grows = "n => document.querySelector('#output textarea').value.length > n"
    busy.wait_for_function(grows, arg=len(output_text(busy)), timeout=WAIT)   # visitor 1 is generating
    waiting.click("#generate")                                             # visitor 2 queues behind it
    stop_now(waiting)
    busy.wait_for_function(grows, arg=len(output_text(busy)), timeout=WAIT)   # visitor 2's Stop spared visitor 1
    expect(busy.locator("#status")).to_contain_text("generating", timeout=WAIT)
    stop_now(busy)
    expect(busy.locator("#status")).to_contain_text("stopped", timeout=WAIT)
    expect(waiting.locator("#status")).to_contain_text("Stopped before it started", timeout=WAIT)
    assert output_text(waiting) == ""                                      # it never ran


def test_phone_width_screenshot(site):
    page = open_page(site, 390, 844)
    set_seed(page, 7)                # a seed that writes 12 tokens (a random one may end the text sooner)
    _, status = run_to_end(page, 12)
    assert "12 tokens" in status
    page.screenshot(path=str(ARTIFACTS / "space-phone.png"), full_page=True)


def test_the_page_joins_prompt_and_continuation_like_the_decoded_sequence(site, long_dir):
    """The first generated word keeps its space on the page too: plain transformers on the same
    weights, decoding the whole sequence, is the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nucleus.tokenizer import encode_prompt
    ref, tok = AutoModelForCausalLM.from_pretrained(long_dir), AutoTokenizer.from_pretrained(long_dir)
    page = open_page(site)
    prompt = "One night,"
    page.locator("#prompt textarea").fill(prompt)
    for label, value in (("Temperature", "0"), ("Repetition penalty", "1")):
        box = page.locator(f"input[aria-label='number input for {label}']")
        box.fill(value)
        box.press("Enter")
        expect(box).to_have_value(value)
    text, _ = run_to_end(page, 12)
    ids = torch.tensor([encode_prompt(tok, prompt)])
    with torch.no_grad():
        full = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                            pad_token_id=2)
    assert text == tok.decode(full[0], skip_special_tokens=True)


def test_a_generate_behind_your_own_compare_says_why_it_waits(site):
    page = open_page(site)
    set_max_new(page, 4000)                                                # far longer than this test
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-run")
    expect(page.locator("#compare-status")).to_contain_text("generating", timeout=WAIT)   # column A runs
    page.get_by_role("tab", name="Write").click()
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("Waiting: your own 1 run (a Compare", timeout=WAIT)
    stop_now(page)                                                         # stops both: the visitor's runs
    expect(page.locator("#status")).to_contain_text("Stopped before it started", timeout=WAIT)
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-status")).to_contain_text("stopped", timeout=WAIT)
