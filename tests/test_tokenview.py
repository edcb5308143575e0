"""Token records: checked against distributions computed by hand from plain forward passes."""
import math

import torch

import nucleus
from nucleus.settings import SamplingSettings
from nucleus.tokenizer import encode_prompt
from nucleus.tokenview import openai_logprobs

PROMPT = "### Lesson: Bread\n### Introduction\n"


def raw_logits(lm, prompt, records, step):
    """The model's logits before token `step`, from a fresh forward pass over prompt + earlier tokens."""
    ids = encode_prompt(lm.tokenizer, prompt) + [r.token_id for r in records[:step]]
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0, -1].double()


def test_recording_does_not_change_the_text(tiny_lm):
    s = SamplingSettings(temperature=0.9, top_p=0.8, top_k=40, min_p=0.01, max_new_tokens=30, seed=5)
    a, b = nucleus.generate(tiny_lm, PROMPT, s), nucleus.generate(tiny_lm, PROMPT, s, record=10)
    assert a.text == b.text and len(b.records) == 30 and not a.records
    assert "".join(r.text for r in b.records) == b.text


def test_greedy_chooses_the_argmax(tiny_lm):
    out = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=0, repetition_penalty=1.0,
                                                             max_new_tokens=12), record=10)
    for i, r in enumerate(out.records):
        logits = raw_logits(tiny_lm, PROMPT, out.records, i)
        assert r.token_id == int(logits.argmax()) and r.greedy
        best = max(r.candidates, key=lambda c: c.final)
        assert best.token_id == r.token_id
        assert math.isclose(r.raw_logprob, float(torch.log_softmax(logits, -1)[r.token_id]), abs_tol=1e-4)


def test_top_p_keeps_the_smallest_set_with_that_mass(tiny_lm):
    p, t = 0.5, 1.3
    out = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=t, top_p=p, repetition_penalty=1.0,
                                                             max_new_tokens=8, seed=2), record=20)
    for i, r in enumerate(out.records):
        probs = torch.softmax(raw_logits(tiny_lm, PROMPT, out.records, i) / t, -1)   # after temperature
        ranked = probs.sort(descending=True)
        need = int((ranked.values.cumsum(0) < p).sum()) + 1      # smallest k whose mass >= p
        kept = set(ranked.indices[:need].tolist())
        assert r.kept == need and r.removed == {"top-p": 32000 - need}
        assert r.token_id in kept
        for c in r.candidates:
            assert (c.removed_by == "top-p") == (c.token_id not in kept)
            assert math.isclose(c.tempered, float(probs[c.token_id]), rel_tol=1e-3, abs_tol=1e-7)
            if c.token_id in kept:                                # renormalised over the kept set
                assert math.isclose(c.final, float(probs[c.token_id] / probs[list(kept)].sum()), rel_tol=1e-3)
            else:
                assert c.final == 0.0


def test_final_distribution_sums_to_one_and_penalty_shows(tiny_lm):
    out = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=1.0, top_k=5, repetition_penalty=2.0,
                                                             max_new_tokens=6, seed=1), record=10)
    for r in out.records:
        kept = [c for c in r.candidates if c.removed_by is None]
        assert len(kept) == r.kept == 5                          # all five kept ones are among the candidates
        assert math.isclose(sum(c.final for c in kept), 1.0, rel_tol=1e-4)
        assert r.removed == {"top-k": 32000 - 5}
    seen = set(encode_prompt(tiny_lm.tokenizer, PROMPT))          # tokens of the prompt are penalised
    changed = [c for r in out.records for c in r.candidates if c.token_id in seen]
    assert changed and all(c.penalized != c.raw for c in changed)


def test_openai_logprobs_shape(tiny_lm):
    out = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(max_new_tokens=5, seed=3), record=10)
    lp = openai_logprobs(out.records, 3)
    assert lp["tokens"] == [r.text for r in out.records] and len(lp["token_logprobs"]) == 5
    assert all(len(t) <= 3 for t in lp["top_logprobs"]) and lp["text_offset"][0] == 0
    assert all(v <= 0 for v in lp["token_logprobs"])
