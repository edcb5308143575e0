"""The quality gate of the quantised CPU paths, on the bundled nano: perplexity within 3% of the
bf16 model's and top-1 next-token agreement with it of at least 95%, on fixed held-out passages
(nucleus/quality.py; bench/serve_speed.py reports the same figures). The reference is plain
transformers in bf16, loaded here, not through nucleus.load."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import nucleus
from nucleus import int4, loading, quality
from nucleus.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def reference():
    return AutoModelForCausalLM.from_pretrained(loading.BUNDLED_MODEL, dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_nano_passes_the_quality_gate(reference, mode):
    if mode == "int4" and int4.int4_supported():
        pytest.skip(int4.int4_supported())
    lm = nucleus.load(loading.BUNDLED_MODEL, device="cpu", quantize=mode)
    result = quality.compare(reference, lm.model, load_tokenizer(loading.BUNDLED_MODEL))
    assert result.positions > 900
    assert abs(result.ppl_change) <= 0.03 and result.top1_agreement >= 0.95, result


def test_the_gate_fails_a_model_that_is_really_worse(reference):
    """The gate can fail: 2-bit-like damage (weights rounded to 3 levels per row) is caught."""
    damaged = AutoModelForCausalLM.from_pretrained(loading.BUNDLED_MODEL, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for m in damaged.modules():
            if isinstance(m, torch.nn.Linear):
                s = m.weight.abs().mean(dim=1, keepdim=True)
                m.weight.copy_(torch.round(m.weight / s).clamp(-1, 1) * s)
    result = quality.compare(reference, damaged, load_tokenizer(loading.BUNDLED_MODEL))
    assert not result.passed and result.top1_agreement < 0.95
