"""The page on a remote engine, in a real browser: the token view and the inspector built from the
log-probabilities the engine streams (a scripted vLLM-shaped engine on loopback, see
tests/test_remote_logprobs.py). Waits are for states, never for durations."""
from playwright.sync_api import expect

from browser import WAIT, browser_on, open_page, run_to_end
from nucleus.loading import BUNDLED_MODEL
from test_remote_logprobs import Engine, legacy_chunks


def test_token_view_and_inspector_from_engine_logprobs():
    engine = Engine(legacy_chunks)
    try:
        with browser_on(BUNDLED_MODEL, NUCLEUS_BACKEND=engine.url) as site:
            page = open_page(site)
            text, status = run_to_end(page, 12)
            assert text.endswith(" I like dogs.\nEND") and "5 tokens" in status
            assert engine.bodies[-1]["logprobs"] == 10               # the page asked for its top 10
            summary = page.locator("#inspect-summary")
            expect(summary).to_contain_text("as the inference engine behind this Space (vllm) reports them",
                                            timeout=WAIT)
            chips = page.locator("#tokens .token.highlighted")
            expect(chips).to_have_count(5, timeout=WAIT)
            chips.nth(2).click()                                       # " dogs": probability exp(-1.2)
            expect(summary).to_contain_text("Token 3", timeout=WAIT)
            expect(summary).to_contain_text("had probability 0.301")
            expect(summary).to_contain_text("only the model column is filled")
            table = page.locator("#inspect-table")
            expect(table).to_contain_text("cats", timeout=WAIT)
            expect(table).to_contain_text("✔ chosen")
            page.screenshot(path="tests/artifacts/remote-token-view.png")
    finally:
        engine.shutdown()
