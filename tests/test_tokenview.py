"""Token records: checked against distributions computed by hand from plain forward passes."""
import math

import torch

import nucleus
from nucleus.settings import SamplingSettings
from nucleus.tokenizer import encode_prompt
from nucleus.tokenview import piece_text

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
                                                             max_new_tokens=6, seed=1), record=300)
    for r in out.records:
        kept = [c for c in r.candidates if c.removed_by is None]
        assert len(kept) == r.kept == 5                          # all five kept ones are among the candidates
        assert math.isclose(sum(c.final for c in kept), 1.0, rel_tol=1e-4)
        assert r.removed == {"top-k": 32000 - 5}
    penalised_shown = 0
    for i, r in enumerate(out.records):                          # the penalty column, computed by hand
        logits = raw_logits(tiny_lm, PROMPT, out.records, i)
        seen = set(encode_prompt(tiny_lm.tokenizer, PROMPT)) | {e.token_id for e in out.records[:i]}
        idx = torch.tensor(sorted(seen))
        logits[idx] = torch.where(logits[idx] > 0, logits[idx] / 2.0, logits[idx] * 2.0)
        by_hand = torch.softmax(logits, -1)
        for c in r.candidates:
            assert math.isclose(c.penalized, float(by_hand[c.token_id]), rel_tol=1e-3, abs_tol=1e-7)
            penalised_shown += c.token_id in seen
    assert penalised_shown                                       # some shown candidate was a penalised one


def processed_by_hand(logits, seen, penalty, temperature, top_p):
    """The distribution a token is drawn from, computed here without transformers' classes:
    repetition penalty (divide a positive logit, multiply a negative one), temperature, top-p."""
    x = logits.clone()
    idx = torch.tensor(sorted(set(seen)))
    x[idx] = torch.where(x[idx] > 0, x[idx] / penalty, x[idx] * penalty)
    x = x / temperature
    p = torch.softmax(x, -1)
    ranked = p.sort(descending=True)
    keep = ranked.indices[:int((ranked.values.cumsum(0) < top_p).sum()) + 1]
    mask = torch.full_like(x, float("-inf"))
    mask[keep] = 0
    return torch.log_softmax(x + mask, -1)


def test_api_logprobs_are_the_models_values_sorted_with_the_chosen_token(tiny_lm):
    s = SamplingSettings(temperature=0.9, top_p=0.8, repetition_penalty=1.5, max_new_tokens=12, seed=3)
    ids0 = encode_prompt(tiny_lm.tokenizer, PROMPT)
    for mode in ("raw", "processed"):
        out = nucleus.generate(tiny_lm, PROMPT, s, logprobs=5, logprobs_mode=mode)
        lp = out.logprobs
        assert len(lp["tokens"]) == 12 and "".join(lp["tokens"]) == out.text and not out.records
        for i, (tid, chosen, top, off) in enumerate(zip(lp["token_ids"], lp["token_logprobs"], lp["top_logprobs"],
                                                        lp["text_offset"])):
            with torch.no_grad():
                logits = tiny_lm.model(torch.tensor([ids0 + lp["token_ids"][:i]])).logits[0, -1].double()
            ref = torch.log_softmax(logits, -1) if mode == "raw" else \
                processed_by_hand(logits, ids0 + lp["token_ids"][:i], 1.5, 0.9, 0.8)
            assert math.isclose(chosen, float(ref[tid]), abs_tol=2e-4)
            values = list(top.values())
            assert values == sorted(values, reverse=True)                       # most likely first
            piece = piece_text(tiny_lm.tokenizer.convert_ids_to_tokens(tid))
            assert piece in top and math.isclose(top[piece], chosen, abs_tol=1e-9)   # the chosen token is there
            best = ref.topk(5).indices.tolist()
            for j in best:                                                      # the five best, as the model says
                key = piece_text(tiny_lm.tokenizer.convert_ids_to_tokens(j))
                assert math.isclose(top[key], float(ref[j]), abs_tol=2e-4)
            assert 5 <= len(top) <= 6
            # OpenAI's text_offset: from the start of prompt + completion
            assert off == len(PROMPT) + sum(len(t) for t in lp["tokens"][:i])
            assert (PROMPT + out.text)[off:].startswith(lp["tokens"][i])


def test_processed_greedy_picks_the_top_of_its_alternatives_even_with_a_penalty(tiny_lm):
    out = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=0, repetition_penalty=1.5, max_new_tokens=20),
                           logprobs=3, logprobs_mode="processed")
    lp = out.logprobs
    for tid, chosen, top in zip(lp["token_ids"], lp["token_logprobs"], lp["top_logprobs"]):
        first_piece, first_value = next(iter(top.items()))
        assert first_piece == piece_text(tiny_lm.tokenizer.convert_ids_to_tokens(tid)) and first_value == chosen
    raw = nucleus.generate(tiny_lm, PROMPT, SamplingSettings(temperature=0, repetition_penalty=1.5,
                                                             max_new_tokens=20), logprobs=3).logprobs
    # the raw distribution can rank another token first: the penalty moved it
    assert raw["token_ids"] == lp["token_ids"]


def test_byte_fallback_tokens_keep_their_pieces_and_the_text_joins(tmp_path):
    """A model steered to write "I like 龘." (龘 is three byte-fallback tokens): each byte token adds
    its text when the character is whole, and its alternatives name it by its <0x..> piece."""
    from conftest import write_parrot_checkpoint

    lm = nucleus.load(write_parrot_checkpoint(tmp_path / "parrot", "Pets:", "I like 龘."), device="cpu")
    out = nucleus.generate(lm, "Pets:", SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=10),
                           logprobs=2, record=5)
    lp = out.logprobs
    assert out.text == " I like 龘." and "".join(lp["tokens"]) == out.text
    pieces = lm.tokenizer.convert_ids_to_tokens(lp["token_ids"])
    assert pieces[3:6] == ["<0xE9>", "<0xBE>", "<0x98>"] and lp["tokens"][3:6] == ["", "", "龘"]
    for piece, top in zip(pieces, lp["top_logprobs"]):
        assert piece_text(piece) in top
    assert [r.token_id for r in out.records] == lp["token_ids"]
