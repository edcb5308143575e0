import threading

import pytest
import torch

import nucleus
from nucleus import generation
from nucleus.generation import cut_at_stop, fit_context
from nucleus.settings import SamplingSettings, SettingsError
from nucleus.tokenizer import encode_prompt

PROMPT = "### Lesson: Bread\n### Introduction\n"


def test_same_seed_same_text_and_other_seeds_differ(tiny_lm):
    s = SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=40, seed=1234)
    a, b = nucleus.generate(tiny_lm, PROMPT, s), nucleus.generate(tiny_lm, PROMPT, s)
    assert a.text == b.text and a.seed == b.seed == 1234 and a.tokens == 40
    c = nucleus.generate(tiny_lm, PROMPT, s.replace(seed=99))
    assert c.text != a.text


def test_random_seed_is_reported_and_reproduces(tiny_lm):
    s = SamplingSettings(temperature=1.0, max_new_tokens=30)
    first = nucleus.generate(tiny_lm, PROMPT, s)
    again = nucleus.generate(tiny_lm, PROMPT, s.replace(seed=first.seed))
    assert again.text == first.text


def test_temperature_zero_is_greedy(tiny_lm):
    n = 25
    out = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                             max_new_tokens=n, seed=1))
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, PROMPT)])
    with torch.no_grad():                       # reference: argmax of the logits, one token at a time
        for _ in range(n):
            nxt = tiny_lm.model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            if nxt.item() == tiny_lm.tokenizer.eos_token_id:
                break
    prompt_len = len(encode_prompt(tiny_lm.tokenizer, PROMPT))
    assert out.text == tiny_lm.tokenizer.decode(ids[0, prompt_len:], skip_special_tokens=True)
    other_seed = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                                    max_new_tokens=n, seed=2))
    assert other_seed.text == out.text


def test_stop_strings_end_the_text_before_them(tiny_lm):
    base = SamplingSettings(temperature=0, max_new_tokens=60)
    full = nucleus.generate(tiny_lm, PROMPT, base)
    stop = full.text[30:34]                 # something the model is certain to write
    cut = full.text.index(stop)
    out = nucleus.generate(tiny_lm, PROMPT, base.replace(stop=[stop, "never-written-zzz"]))
    assert out.text == full.text[:cut] and out.finish_reason == "stop"
    assert out.tokens < full.tokens         # generation itself stopped early, not just the text


def test_cut_at_stop_holds_back_possible_starts():
    assert cut_at_stop("abc\nQue", ("\nQuestion:",)) == ("abc", False)
    assert cut_at_stop("abc\nQuestion: x", ("\nQuestion:",)) == ("abc", True)
    assert cut_at_stop("abc", ()) == ("abc", False)
    assert cut_at_stop("a END b STOP", ("STOP", "END")) == ("a ", True)


def test_streaming_yields_growing_text_and_reports_speed(tiny_lm):
    updates = list(nucleus.stream(tiny_lm, PROMPT, SamplingSettings(max_new_tokens=60, seed=3)))
    assert len(updates) > 3 and updates[-1].done and not any(u.done for u in updates[:-1])
    texts = [u.text for u in updates]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    last = updates[-1]
    assert last.tokens == 60 and last.finish_reason == "length" and last.tokens_per_second > 0


def test_cancel_stops_within_one_token_and_frees_the_worker(tiny_lm, monkeypatch):
    controls = []

    class Recording(generation.RunControl):
        def __init__(self, *a):
            super().__init__(*a)
            controls.append(self)

    monkeypatch.setattr(generation, "RunControl", Recording)
    cancel = threading.Event()
    s = SamplingSettings(max_new_tokens=500, seed=5)
    it = nucleus.stream(tiny_lm, "x", s, cancel)
    at_cancel = None
    for update in it:
        if at_cancel is None and update.tokens >= 5:
            at_cancel = controls[0].tokens   # tokens the worker had made when Stop was pressed
            cancel.set()
    assert update.done and update.finish_reason == "cancelled"
    assert update.tokens <= at_cancel + 1 < 500
    assert generation._RUN_LOCK.acquire(timeout=1)   # the worker is free for the next request
    generation._RUN_LOCK.release()


def test_abandoning_the_stream_stops_generation(tiny_lm):
    it = nucleus.stream(tiny_lm, "x", SamplingSettings(max_new_tokens=500, seed=6))
    for _, update in zip(range(3), it):
        pass
    it.close()                                     # what a dropped request does
    assert not any(t.name == "nucleus-generate" for t in threading.enumerate())
    assert generation._RUN_LOCK.acquire(timeout=1)
    generation._RUN_LOCK.release()


def test_long_prompt_is_cut_with_a_warning(tiny_lm):
    prompt = "word " * 2000
    out = nucleus.generate(tiny_lm, prompt, SamplingSettings(max_new_tokens=12, seed=1))
    assert out.warning and "cut to its last 500" in out.warning and out.tokens == 12


def test_fit_context():
    assert fit_context([1, 5, 6], 10, 100) == ([1, 5, 6], None)
    kept, warning = fit_context([1] + list(range(10, 30)), 5, 10)
    assert kept == [1, 26, 27, 28, 29]
    assert len(kept) == 5 and kept[0] == 1 and warning
    with pytest.raises(SettingsError, match="max_new_tokens"):
        fit_context([1], 10, 10)


def test_prompt_must_be_text(tiny_lm):
    with pytest.raises(SettingsError, match="prompt"):
        next(nucleus.stream(tiny_lm, 42, SamplingSettings()))
