"""The int4 path: the kernel's packed layout, numerics against an independent reference, and how
a whole model is converted. The quality gate on the bundled nano: tests/test_quantize_quality.py."""
import pytest
import torch

import nucleus
from nucleus import int4, int8

pytestmark = pytest.mark.skipif(int4.int4_supported() is not None, reason="int4 kernel not usable on this CPU")


def reference_int4(w: torch.Tensor, group: int) -> torch.Tensor:
    """De-quantised weight computed from scratch, group by group in plain Python loops over
    groups: min to max onto 0..15, scale and zero rounded to bf16, w = (q - 8) * scale + zero."""
    out = torch.empty_like(w, dtype=torch.float32)
    for r in range(w.shape[0]):
        for c in range(0, w.shape[1], group):
            g = w[r, c:c + group].float()
            scale = torch.tensor(max((g.max() - g.min()).item() / 15, 1e-12)).to(torch.bfloat16).float()
            zero = (g.min() + 8 * scale).to(torch.bfloat16).float()
            q = torch.clamp(torch.round((g - zero) / scale + 8), 0, 15)
            out[r, c:c + group] = (q - 8) * scale + zero
    return out


def test_pack_and_unpack_round_trip_through_the_kernels_layout():
    q = torch.randint(0, 16, (192, 96), dtype=torch.int32)
    packed = int4.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (192, 48)
    # packed by blocks of rows equals the kernel packing the whole weight at once
    assert torch.equal(packed, torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
    assert torch.equal(int4.unpack_int4(packed, torch.empty_like(q)), q)


def test_int4_layer_matches_an_independent_dequantisation_on_both_paths():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 192, bias=False)
    before = lin.weight.detach().clone()
    layer = int4.Int4Linear(lin, group=32)
    assert torch.equal(lin.weight, before)                       # quantising never edits the source
    assert layer.weight_int4.shape == (192, 128) and layer.scale_zeros.shape == (8, 192, 2)
    ref_w = reference_int4(before, 32)
    assert torch.allclose(layer.dequantize().float(), ref_w, atol=1e-3, rtol=1e-2)
    err = ((ref_w - before).norm() / before.norm()).item()
    assert 0.01 < err < 0.12                                     # 4 bits: a real, bounded loss
    for rows in (1, 3, int4.INT4_DENSE_ROWS + 5):                    # the kernel, then the dense prefill path
        x = torch.randn(2, rows, 256)
        want = x @ ref_w.t()
        got = layer(x.to(torch.bfloat16)).float()
        assert got.shape == (2, rows, 192)
        assert ((got - want).norm() / want.norm()).item() < 0.01, rows


def test_int4_refuses_shapes_and_biases_it_cannot_take():
    with pytest.raises(ValueError, match="without bias"):
        int4.Int4Linear(torch.nn.Linear(64, 64, bias=True))
    with pytest.raises(ValueError, match="divisible"):
        int4.Int4Linear(torch.nn.Linear(48, 128, bias=False), group=32)


def test_int4_model_keeps_the_output_layer_in_int8(tiny_dir):
    lm = nucleus.load(tiny_dir, device="cpu", quantize="int4")
    assert lm.quantization == "int4" and "int4 weights" in lm.describe()
    layers = {name: m for name, m in lm.model.named_modules() if isinstance(m, (int4.Int4Linear, int8.Int8Linear))}
    assert not any(type(m) is torch.nn.Linear for m in lm.model.modules())
    assert len(layers) == 7 * lm.model.config.num_hidden_layers + 1
    assert isinstance(layers.pop("lm_head"), int8.Int8Linear)
    # every other layer is int4 exactly when the kernel takes its shape: input columns in whole
    # groups of 32, output rows in whole blocks of the kernel's vector width (64 with AVX-512)
    block = {"AVX512": 64, "AVX2": 32}[torch.backends.cpu.get_cpu_capability()]
    for name, m in layers.items():
        fits = m.in_features % 32 == 0 and m.out_features % block == 0
        assert isinstance(m, int4.Int4Linear if fits else int8.Int8Linear), (name, m.in_features, m.out_features)
    assert sum(isinstance(m, int4.Int4Linear) for m in layers.values()) >= 4
    s = nucleus.SamplingSettings(max_new_tokens=12, seed=3)
    a, b = nucleus.generate(lm, "### Lesson: Salt\n", s), nucleus.generate(lm, "### Lesson: Salt\n", s)
    assert a.tokens == 12 and a.text == b.text


def test_prefill_is_exact_in_either_dense_dtype(monkeypatch):
    """Prefill's dense matmul runs in bf16 where the CPU multiplies bf16 natively and in fp32 where
    it does not (there bf16 was 70x slower); both give the de-quantised weight's product."""
    from torch import nn

    lin = nn.Linear(256, 128, bias=False).to(torch.bfloat16)
    x = torch.randn(100, 256, dtype=torch.bfloat16)                 # 100 rows: the dense path
    for dtype in (torch.bfloat16, torch.float32):
        monkeypatch.setattr(int8, "dense_dtype", lambda dtype=dtype: dtype)
        for name, layer in (("int4", int4.Int4Linear(lin)), ("int8", int8.Int8Linear(lin))):
            with torch.inference_mode():
                y = layer(x).float()
                ref = x.float() @ layer.dequantize().float().t()
            assert (y - ref).abs().max() <= 0.02 * ref.abs().max(), (name, dtype)
