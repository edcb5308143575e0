"""The bundled offline default, models/nucleus-nano: present, loadable, served by default offline."""
import json
import math

import torch

import nucleus
from nucleus import loading, quality
from nucleus.tokenizer import encode_prompt

# Held-out text: written for this project, in none of the training sources (the quality gate's first passage).
HELD_OUT = quality.HELD_OUT[0]


def perplexity(lm, text: str) -> float:
    ids = torch.tensor([encode_prompt(lm.tokenizer, text)])
    with torch.no_grad():
        loss = lm.model(input_ids=ids, labels=ids).loss.float().item()
    return math.exp(loss)


def test_bundled_model_is_small_and_documented():
    folder = loading.BUNDLED_MODEL
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    assert 0 < weights <= 60e6
    card = (folder / "README.md").read_text()
    for fact in ("perplexity", "tokens seen", "MANIFEST", "train/configs/nano-pretrain.yaml"):
        assert fact in card
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "mistral" and cfg["vocab_size"] == 32000


def test_offline_start_serves_the_bundled_model(monkeypatch):
    monkeypatch.delenv("NUCLEUS_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loading.hub_reachable.cache_clear()
    source, why = nucleus.resolve_model(None)
    assert source == str(loading.BUNDLED_MODEL) and "bundled" in why
    loading.hub_reachable.cache_clear()


def test_bundled_model_generates_and_has_learned_english():
    lm = nucleus.load(loading.BUNDLED_MODEL, device="cpu")
    assert lm.n_params <= 30_000_000
    s = nucleus.SamplingSettings(max_new_tokens=40, seed=7)
    out = nucleus.generate(lm, "### Lesson: The Water Cycle\n", s)
    assert out.tokens > 0 and out.text == nucleus.generate(lm, "### Lesson: The Water Cycle\n", s).text
    # a random 19.8M model scores a perplexity in the tens of thousands on this text
    assert perplexity(lm, HELD_OUT) < 1000


def test_int8_keeps_perplexity_within_two_percent():
    plain = nucleus.load(loading.BUNDLED_MODEL, device="cpu", quantize="none")
    quant = nucleus.load(loading.BUNDLED_MODEL, device="cpu", quantize="int8")
    p, q = perplexity(plain, HELD_OUT), perplexity(quant, HELD_OUT)
    assert abs(q - p) / p < 0.02, (p, q)
