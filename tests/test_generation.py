import re
import threading

import pytest
import torch

import nucleus
from nucleus import backend, local
from nucleus.backend import cut_at_stop, fit_context
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


def test_cancel_stops_within_one_token(tiny_lm):
    cancel = threading.Event()
    s = SamplingSettings(max_new_tokens=500, seed=5)
    seen = 0
    for update in nucleus.stream(tiny_lm, "x", s, cancel):
        if not update.done:
            seen = update.tokens
        if seen >= 5 and not cancel.is_set():
            at_cancel = seen               # the loop yields one update per token: Stop comes after token 5
            cancel.set()
    assert update.done and update.finish_reason == "cancelled"
    assert update.tokens == at_cancel < 500   # not one token more: the flag is read before the next forward


def test_abandoning_the_stream_stops_generation_and_starts_no_thread(tiny_lm):
    before = threading.active_count()
    it = nucleus.stream(tiny_lm, "x", SamplingSettings(max_new_tokens=500, seed=6))
    for _, update in zip(range(3), it):
        assert threading.active_count() == before     # the loop runs in the consumer's own thread
    it.close()                                       # what a dropped request does
    with pytest.raises(StopIteration):
        next(it)


def test_runs_from_other_threads_are_independent_and_reproducible(tiny_lm):
    """Each run draws from its own seeded generator: two at once give what each gives alone."""
    s = [SamplingSettings(max_new_tokens=30, seed=k, temperature=1.0) for k in (1, 2)]
    alone = [nucleus.generate(tiny_lm, PROMPT, x).text for x in s]
    out = [None, None]

    def work(i):
        out[i] = nucleus.generate(tiny_lm, PROMPT, s[i]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == alone


def test_long_prompt_is_cut_oldest_first_and_the_kept_part_is_reported(tiny_lm):
    prompt = " ".join(f"w{i}" for i in range(1500))            # far more than the 512-token context
    out = nucleus.generate(tiny_lm, prompt, SamplingSettings(max_new_tokens=12, seed=1))
    assert out.tokens == 12 and "more than the model's 512-token context" in out.warning
    seen = prompt[out.prompt_start:]
    assert 0 < out.prompt_start and prompt.endswith(seen) and "w1499" in seen and "w0 " not in seen
    kept = int(re.search(r"saw only its last (\d+) tokens", out.warning)[1])
    assert kept + 12 + 1 <= 512                                  # + the BOS
    # what the model saw, counted independently: the kept text re-encodes to `kept` tokens (+/- the join)
    assert abs(len(tiny_lm.tokenizer(seen, add_special_tokens=False).input_ids) - kept) <= 1


def test_max_new_tokens_is_lowered_instead_of_cutting_a_prompt_that_fits(tiny_lm):
    prompt = "Once upon a time, there was a little rabbit named Pip. One night,"
    n_prompt = len(encode_prompt(tiny_lm.tokenizer, prompt))
    out = nucleus.generate(tiny_lm, prompt, SamplingSettings(max_new_tokens=511, seed=1, repetition_penalty=1.0))
    assert out.prompt_start == 0                                 # the whole prompt was used
    assert out.warning and f"lowered from 511 to {512 - n_prompt}" in out.warning
    assert out.tokens <= 512 - n_prompt


def test_fit_context():
    assert fit_context([1, 5, 6], 10, 100) == backend.Fit([1, 5, 6], 10)
    fit = fit_context([1] + list(range(10, 30)), 5, 100)          # fits: unchanged
    assert fit.max_new_tokens == 5 and fit.warning is None
    fit = fit_context([1] + list(range(10, 30)), 50, 30)          # prompt fits, new tokens do not
    assert fit.ids == [1] + list(range(10, 30)) and fit.max_new_tokens == 9 and "lowered" in fit.warning
    fit = fit_context([1] + list(range(10, 50)), 8, 20)           # the prompt alone overflows
    assert len(fit.ids) + fit.max_new_tokens <= 20 and fit.ids[0] == 1 and fit.ids[-1] == 49
    assert fit.first_kept == 41 - (len(fit.ids) - 1)


def test_time_limit_ends_the_run_with_its_own_reason(tiny_lm):
    out = nucleus.generate(tiny_lm, "x", SamplingSettings(max_new_tokens=511, seed=4, repetition_penalty=1.0),
                           max_time=0.05)
    assert out.finish_reason == "time" and out.tokens < 511
    with pytest.raises(ValueError, match="max_time"):
        nucleus.generate(tiny_lm, "x", SamplingSettings(max_new_tokens=5), max_time=0)


def test_prompt_must_be_text(tiny_lm):
    with pytest.raises(SettingsError, match="prompt"):
        next(nucleus.stream(tiny_lm, 42, SamplingSettings()))


# ---- the continuation joins the prompt exactly as the model's tokens say -----------------------
JOIN_PROMPTS = ["Once upon a time, there was a rabbit. One night,",   # ends without a space
                "there was ",                                          # ends with a space
                "### Lesson: Bread\n### Introduction\n",                # ends with a newline
                "Café au lait, 你好",                                   # non-ASCII
                ""]


@pytest.mark.parametrize("prompt", JOIN_PROMPTS)
def test_prompt_plus_text_is_the_decoded_sequence(tiny_lm, prompt):
    """Reference from plain transformers: generate greedily, decode the WHOLE sequence."""
    n = 40
    out = nucleus.generate(tiny_lm, prompt, SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                             max_new_tokens=n))
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, prompt)])
    with torch.no_grad():
        full = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=n, eos_token_id=tiny_lm.tokenizer.eos_token_id,
                                      pad_token_id=tiny_lm.tokenizer.eos_token_id)
    whole = tiny_lm.tokenizer.decode(full[0], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert tiny_lm.tokenizer.decode(ids[0], skip_special_tokens=True) == prompt   # the prompt round-trips
    assert prompt + out.text == whole


def test_a_first_word_that_starts_with_a_space_keeps_it(tiny_lm):
    """The bug this guards against: "One night,it…". Pick prompts whose first greedy token really
    starts with "▁" (found here with plain forward passes), then check the join on them."""
    tok, hits = tiny_lm.tokenizer, []
    for word in ("One night,", "there was", "Bread", "The cat", "Hello", "Rome", "Introduction:", "apple", "x",
                 "Step 1.", "The", "Water", "It was", "Then", "Soup"):
        ids = torch.tensor([encode_prompt(tok, word)])
        with torch.no_grad():
            first = tiny_lm.model(ids).logits[0, -1].argmax().item()
        if tok.convert_ids_to_tokens(first).startswith("▁"):
            hits.append((word, tok.convert_ids_to_tokens(first)))
    assert hits, "no prompt found whose first greedy token starts with a space"
    for word, piece in hits:
        out = nucleus.generate(tiny_lm, word, SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                               max_new_tokens=3))
        assert out.text.startswith(" " + piece[1:]), (word, piece, out.text)


def test_streamed_text_joins_the_prompt_and_grows(tiny_lm):
    prompt = "One night,"
    updates = list(nucleus.stream(tiny_lm, prompt, SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                                     max_new_tokens=150)))
    texts = [u.text for u in updates]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))   # across the decoder's window restarts
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, prompt)])
    with torch.no_grad():
        full = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=150, pad_token_id=2)
    assert prompt + texts[-1] == tiny_lm.tokenizer.decode(full[0], skip_special_tokens=True)


def test_incremental_decoder_keeps_spaces_across_windows(tiny_lm):
    tok = tiny_lm.tokenizer
    prompt_ids = encode_prompt(tok, "The story:")
    text = " the cat sat on the mat, 你好 café.\n" * 30
    new_ids = tok(text, add_special_tokens=False).input_ids
    dec = local.IncrementalDecoder(tok, prompt_ids)
    for i in range(0, len(new_ids), 3):                          # arrives a few ids at a time
        got = dec.add(new_ids[i:i + 3])
    assert "The story:" + got == tok.decode(prompt_ids + new_ids, skip_special_tokens=True)


# ---- a checkpoint's generation_config.json never overrides the user's settings ------------------
def test_checkpoint_generation_config_does_not_override_settings(tiny_dir, tmp_path):
    import json
    import shutil
    odd = tmp_path / "odd-defaults"
    shutil.copytree(tiny_dir, odd)
    (odd / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.05, "top_k": 1, "top_p": 0.1, "min_p": 0.9, "typical_p": 0.2,
        "repetition_penalty": 2.0, "no_repeat_ngram_size": 1, "max_new_tokens": 3, "min_new_tokens": 30,
        "suppress_tokens": list(range(3, 2000)), "bos_token_id": 1, "eos_token_id": 2}))
    plain, odd_lm = nucleus.load(tiny_dir, device="cpu"), nucleus.load(odd, device="cpu")
    for s in (SamplingSettings(temperature=1.0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=20,
                               seed=8),
              SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=20)):
        a, b = nucleus.generate(plain, PROMPT, s), nucleus.generate(odd_lm, PROMPT, s)
        assert a.text == b.text and a.tokens == b.tokens == 20


# ---- the GPU path's switch: a static KV cache (compiled with CUDA graphs on a GPU) ---------------------
def test_static_cache_is_on_for_unquantised_cuda_models_only(tiny_lm, monkeypatch):
    import dataclasses

    from nucleus.options import OptionError

    monkeypatch.delenv("NUCLEUS_STATIC_CACHE", raising=False)
    cuda = dataclasses.replace(tiny_lm, device=torch.device("cuda"))
    assert not tiny_lm.static_cache() and cuda.static_cache()
    assert not dataclasses.replace(cuda, quantization="int8").static_cache()
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "off")
    assert not cuda.static_cache()
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", " ON ")
    assert tiny_lm.static_cache()
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "")                      # set but empty: the default
    assert not tiny_lm.static_cache() and cuda.static_cache()
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "yes")
    with pytest.raises(OptionError, match="NUCLEUS_STATIC_CACHE='yes' \\(from the environment\\): must be one of auto, on, off"):
        tiny_lm.static_cache()


def test_static_cache_path_gives_the_dynamic_paths_text(tiny_lm, monkeypatch):
    """NUCLEUS_STATIC_CACHE=on on CPU (the cache without compiling): the same text for the same seed,
    for runs of different lengths one after the other in the one reused cache, sampled and greedy,
    stop strings included; and the model really got a StaticCache."""
    from transformers import StaticCache

    caches = set()
    forward = tiny_lm.model.forward

    def forward_spy(*args, **kwargs):     # the cache the model really got (5.24 names it cache)
        caches.add(type(kwargs.get("cache", kwargs.get("past_key_values"))).__name__)
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.model, "forward", forward_spy)
    runs = [("### Lesson: Bees\n", SamplingSettings(max_new_tokens=12, seed=3)),
            ("Once upon a time", SamplingSettings(max_new_tokens=30, seed=4, repetition_penalty=1.5, top_k=20)),
            ("x", SamplingSettings(max_new_tokens=8, seed=5, temperature=0.0)),
            ("### Recipe", SamplingSettings(max_new_tokens=40, seed=6, stop=("e",)))]
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "off")
    dynamic = [nucleus.generate(tiny_lm, p, s) for p, s in runs]
    assert caches == {"DynamicCache"}
    caches.clear()
    monkeypatch.setenv("NUCLEUS_STATIC_CACHE", "on")
    static = [nucleus.generate(tiny_lm, p, s) for p, s in runs]
    assert caches == {StaticCache.__name__}
    for d, s in zip(dynamic, static):
        assert (s.text, s.tokens, s.finish_reason) == (d.text, d.tokens, d.finish_reason)
    assert dynamic[3].finish_reason == "stop" and dynamic[1].tokens == 30
