"""The bundled offline default, models/nucleus-nano: present, loadable, served by default offline."""
import json
import math

import torch

import nucleus
from nucleus import loading
from nucleus.tokenizer import encode_prompt

# Held-out text: written for this test, in none of the training sources.
HELD_OUT = """### Lesson: How Bread Rises
### Introduction
Bread rises because of yeast, a tiny living thing that feeds on the sugar in flour. As the yeast
eats, it makes a gas called carbon dioxide. The gas forms small bubbles in the dough, and the
dough grows larger. When the bread is baked, the heat kills the yeast and the bubbles are set in
place, which is why a slice of bread is full of little holes.

### Why Kneading Matters
Kneading the dough stretches a protein called gluten. The gluten forms long strands that trap the
gas, so the dough can rise without the bubbles escaping. A dough that is not kneaded enough will
stay flat, while a dough that is kneaded well will be light and soft after baking.
"""


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
