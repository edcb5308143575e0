"""The int8 CPU serving path: numerics, wiring and the automatic choice."""
import pytest
import torch

import nucleus
from nucleus import quantize as Q
from nucleus.loading import ModelLoadError


def test_int8_linear_matches_the_float_layer_on_both_kernels():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 512, bias=False)
    q = Q.Int8Linear(lin)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.shape == (512, 256)
    for rows in (1, 4, Q.DENSE_ROWS + 8):               # decode kernel, and the dense prefill path
        x = torch.randn(1, rows, 256)
        ref, got = lin(x), q(x.to(torch.bfloat16)).float()
        assert got.shape == ref.shape
        assert ((got - ref).norm() / ref.norm()).item() < 0.02
    with pytest.raises(ValueError, match="without bias"):
        Q.Int8Linear(torch.nn.Linear(4, 4, bias=True))


def test_quantize_replaces_every_linear_and_keeps_the_logits(tiny_dir):
    plain = nucleus.load(tiny_dir, device="cpu", quantize="none")
    quant = nucleus.load(tiny_dir, device="cpu", quantize="int8")
    assert quant.quantization == "int8" and "int8 weights" in quant.describe()
    assert not any(type(m) is torch.nn.Linear for m in quant.model.modules())
    n_int8 = sum(isinstance(m, Q.Int8Linear) for m in quant.model.modules())
    assert n_int8 == 7 * quant.model.config.num_hidden_layers + 1          # q k v o gate up down + lm_head
    ids = torch.tensor([[1, 415, 5565, 302, 272, 2435, 28723]])
    with torch.no_grad():
        a, b = plain.model(ids).logits, quant.model(ids).logits.float()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.85
    assert ((a - b).norm() / a.norm()).item() < 0.05


def test_quantized_model_generates_through_the_same_path(tiny_dir):
    lm = nucleus.load(tiny_dir, device="cpu", quantize="int8")
    s = nucleus.SamplingSettings(max_new_tokens=10, seed=4)
    a, b = nucleus.generate(lm, "### Lesson: Salt\n", s), nucleus.generate(lm, "### Lesson: Salt\n", s)
    assert a.tokens == 10 and a.text == b.text


def test_auto_picks_int8_only_for_big_models_on_cpu(tiny_dir):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert Q.resolve_mode("auto", cpu, 1_134_596_096) == "int8"
    assert Q.resolve_mode("auto", cpu, 19_794_176) == "none"
    assert Q.resolve_mode("auto", gpu, 1_134_596_096) == "none"
    assert Q.resolve_mode("none", cpu, 1_134_596_096) == "none"       # the switch to turn it off
    with pytest.raises(ValueError, match="CPU path"):
        Q.resolve_mode("int8", gpu, 10)
    with pytest.raises(ModelLoadError, match="quantize must be one of"):
        nucleus.load(tiny_dir, device="cpu", quantize="int3")
    assert nucleus.load(tiny_dir, device="cpu").quantization == "none"  # auto: the tiny model stays fp32
