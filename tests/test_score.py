"""Scoring (nucleus/score.py; /score, the CLI's score) and the logit lens, against plain transformers."""
import json
import math
import subprocess
import sys

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from transformers import AutoModelForCausalLM

import nucleus
from conftest import ROOT
from nucleus.settings import SettingsError
from nucleus.tokenizer import load_tokenizer
from serve import running_app

NANO = ROOT / "models" / "nucleus-nano"
TEXT = "### Lesson: Bread\n### Introduction\nBread is baked from flour, water and yeast. <s> stays text."


@pytest.fixture(scope="module")
def reference():
    """log p of each token after <s>, and its rank, computed here with plain transformers in float64."""
    model = AutoModelForCausalLM.from_pretrained(NANO, dtype=torch.float32)
    tok = load_tokenizer(NANO)
    ids = tok(TEXT, split_special_tokens=True)["input_ids"]            # <s> + the text's tokens, "<s>" as text
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    lps = [logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    ranks = [int((logp[i] > logp[i, ids[i + 1]]).sum()) + 1 for i in range(len(ids) - 1)]
    return ids[1:], lps, ranks, model, tok


def test_score_equals_plain_transformers(reference):
    ids, lps, ranks, _, _ = reference
    result = nucleus.load(NANO, device="cpu", dtype=torch.float32, quantize="none").score(TEXT, top=3)
    assert result.token_ids == ids and result.ranks == ranks
    assert all(abs(a - b) < 1e-4 for a, b in zip(result.token_logprobs, lps))
    assert math.isclose(result.perplexity, math.exp(-sum(lps) / len(lps)), rel_tol=1e-3)
    assert all(len(t) == 3 for t in result.top_logprobs)
    assert all(max(t.values()) >= lp - 1e-6 for t, lp in zip(result.top_logprobs, result.token_logprobs))
    assert result.surprising[0] == min(range(len(lps)), key=lambda i: lps[i])


def test_the_logit_lens_last_layer_is_the_model_and_a_middle_layer_is_norm_and_projection(reference):
    ids, _, _, model, tok = reference
    lm = nucleus.load(NANO, device="cpu", dtype=torch.float32, quantize="none")
    position = 6
    lens = lm.logit_lens(TEXT, position, top=3)
    assert len(lens["layers"]) == model.config.num_hidden_layers + 1
    x = torch.tensor([[tok.bos_token_id] + ids[:position + 1]])
    caught = {}
    hook = model.model.layers[1].register_forward_hook(lambda m, a, out: caught.update(h=out[0] if isinstance(
        out, tuple) else out))                                       # the test's own path to layer 2's output
    with torch.no_grad():
        own = torch.softmax(model(x).logits[0, -2], -1)
        hook.remove()
        by_hand = torch.softmax(model.lm_head(model.model.norm(caught["h"][0, -2])), -1)
    target = ids[position]
    assert abs(lens["layers"][-1]["probability"] - own[target].item()) < 1e-5          # the model's own
    assert abs(lens["layers"][2]["probability"] - by_hand[target].item()) < 1e-5      # after layer 2, by hand
    assert lens["layers"][2]["rank"] == int((by_hand > by_hand[target]).sum()) + 1
    with pytest.raises(SettingsError, match="position: expected a token index from 0 to"):
        lm.logit_lens(TEXT, 999)


def test_the_api_scores_and_refuses_bad_input_while_serving(reference):
    ids, lps, ranks, _, _ = reference
    with running_app(NANO) as url:
        client = Client(url, verbose=False)
        out = client.predict(TEXT, 3, api_name="/score")
        assert out["token_ids"] == ids and out["ranks"] == ranks and out["model"] == "nucleus-nano"
        assert abs(out["perplexity"] / math.exp(-sum(lps) / len(lps)) - 1) < 1e-3       # within 0.1%
        for bad, says in (("", "give some text to score"), ("x" * 200_000, "text: 200,000 characters"),
                          ((TEXT, 99), "top: expected a whole number from 0 to 20")):
            args = bad if isinstance(bad, tuple) else (bad,)
            with pytest.raises(AppError, match=says):
                client.predict(*args, api_name="/score")
        assert client.predict("Still here.", api_name="/score")["tokens"]                # still serving


def test_cli_score_prints_ranks_and_perplexity(reference):
    ids, lps, ranks, _, _ = reference
    out = subprocess.run([sys.executable, "-m", "nucleus", "score", "--model", str(NANO), "--text", TEXT, "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["ranks"] == ranks and abs(got["perplexity"] / math.exp(-sum(lps) / len(lps)) - 1) < 1e-3
    plain = subprocess.run([sys.executable, "-m", "nucleus", "score", "--model", str(NANO), "--text", "Hello world"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "[perplexity " in plain.stderr and len(plain.stdout.splitlines()) >= 2
    none = subprocess.run([sys.executable, "-m", "nucleus", "score", "--model", str(NANO)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert none.returncode == 2 and "give --text TEXT or --file PATH" in none.stderr
