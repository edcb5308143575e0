"""The int8 and int4 CPU serving paths: numerics, wiring, memory and the automatic choice."""
import os
import subprocess
import sys
import threading

import pytest
import torch

import nucleus
from nucleus import int8, quantize
from nucleus.loading import ModelLoadError

from conftest import ROOT


def test_int8_linear_matches_the_float_layer_on_both_kernels():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 512, bias=False)
    q = int8.Int8Linear(lin)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.shape == (512, 256)
    for rows in (1, 4, int8.DENSE_ROWS + 8):               # decode kernel, and the dense prefill path
        x = torch.randn(1, rows, 256)
        ref, got = lin(x), q(x.to(torch.bfloat16)).float()
        assert got.shape == ref.shape
        assert ((got - ref).norm() / ref.norm()).item() < 0.02
    with pytest.raises(ValueError, match="without bias"):
        int8.Int8Linear(torch.nn.Linear(4, 4, bias=True))


def test_quantize_replaces_every_linear_and_keeps_the_logits(tiny_dir):
    plain = nucleus.load(tiny_dir, device="cpu", quantize="none")
    quant = nucleus.load(tiny_dir, device="cpu", quantize="int8")
    assert quant.quantization == "int8" and "int8 weights" in quant.describe()
    assert not any(type(m) is torch.nn.Linear for m in quant.model.modules())
    n_int8 = sum(isinstance(m, int8.Int8Linear) for m in quant.model.modules())
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


def test_auto_quantises_only_big_models_on_cpu_with_the_faster_kernel(tiny_dir, monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert quantize.fastest_cpu_mode() in ("int4", "int8")
    assert quantize.resolve_mode("auto", cpu, 1_134_596_096) == quantize.fastest_cpu_mode()
    for fastest in ("int4", "int8"):
        monkeypatch.setattr(quantize, "fastest_cpu_mode", lambda: fastest)
        assert quantize.resolve_mode("auto", cpu, 1_134_596_096) == fastest
    with pytest.raises(ValueError, match="CPU path"):
        quantize.resolve_mode("int4", gpu, 10)
    assert quantize.resolve_mode("auto", cpu, 19_794_176) == "none"
    assert quantize.resolve_mode("auto", gpu, 1_134_596_096) == "none"
    assert quantize.resolve_mode("none", cpu, 1_134_596_096) == "none"       # the switch to turn it off
    with pytest.raises(ValueError, match="CPU path"):
        quantize.resolve_mode("int8", gpu, 10)
    with pytest.raises(ModelLoadError, match="quantize must be one of"):
        nucleus.load(tiny_dir, device="cpu", quantize="int3")
    assert nucleus.load(tiny_dir, device="cpu").quantization == "none"  # auto: the tiny model stays fp32


# ---- numerics: the scale used to quantise is the one stored -----------------------------------------
def test_weights_are_quantised_with_the_scale_that_dequantises_them():
    torch.manual_seed(1)
    lin = torch.nn.Linear(512, 300, bias=False)
    q = int8.Int8Linear(lin)
    assert q.scale.dtype == torch.bfloat16
    w, s = lin.weight.detach().float(), q.scale.float()[:, None]              # (out, in), (out, 1)
    assert torch.equal(q.weight_int8, torch.round(w / s).clamp(-127, 127).to(torch.int8))
    # round-to-nearest with the stored scale: every weight within half a step of its int8 value
    assert ((q.weight_int8.float() * s - w).abs() <= 0.5 * s * (1 + 1e-3)).all()


# ---- the prefill path: one small buffer for the whole process -------------------------------------
def test_prefill_reuses_one_small_buffer_across_threads_and_matches_dense():
    torch.manual_seed(2)
    lin = torch.nn.Linear(2048, 5000, bias=False)        # 20 MB in bf16: more than one block
    q = int8.Int8Linear(lin)
    assert q.out_features > int8.SCRATCH.block_rows(q.in_features)
    x = torch.randn(1, int8.DENSE_ROWS + 32, 2048, dtype=torch.bfloat16)
    ref = (x.float() @ (q.weight_int8.float() * q.scale.float()[:, None]).t())
    first = q(x)                                          # allocates the buffer if no test did yet
    assert ((first.float() - ref).norm() / ref.norm()).item() < 0.01
    buf, allocations = int8.SCRATCH.buf.data_ptr(), int8.SCRATCH.allocations
    outs = []
    for _ in range(3):                                    # each request runs in a new thread
        t = threading.Thread(target=lambda: outs.append(q(x)))
        t.start()
        t.join()
    assert len(outs) == 3 and all(torch.equal(o, first) for o in outs)
    assert int8.SCRATCH.allocations == allocations and int8.SCRATCH.buf.data_ptr() == buf
    assert int8.SCRATCH.buf.numel() <= int8.PREFILL_BLOCK_BYTES < q.weight_int8.numel() * 2   # bytes


def test_concurrent_prefills_do_not_mix_their_weights():
    torch.manual_seed(3)
    layers = [int8.Int8Linear(torch.nn.Linear(1024, 2500, bias=False)) for _ in range(2)]
    x = torch.randn(int8.DENSE_ROWS + 16, 1024, dtype=torch.bfloat16)
    expected = [layer(x) for layer in layers]
    wrong = []

    def work(k):
        for _ in range(6):
            if not torch.equal(layers[k % 2](x), expected[k % 2]):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


# ---- memory: the int8 model never holds a bf16 copy beside its int8 one ----------------------------
def test_release_drops_mapped_pages_and_never_touches_anonymous_memory(tmp_path):
    from safetensors.torch import load_file, save_file

    data = torch.arange(4 * 2**20, dtype=torch.float32)                       # 16 MB
    save_file({"w": data}, tmp_path / "w.safetensors")
    mapped = load_file(tmp_path / "w.safetensors")["w"]                        # memory-mapped
    assert torch.equal(mapped, data)                                           # pages now resident
    mappings = int8.file_mappings()
    assert int8.release_if_mapped(mapped, mappings) >= 15 * 2**20
    assert torch.equal(mapped, data)              # read back unchanged from the file
    anon = data.clone()
    assert int8.release_if_mapped(anon, mappings) == 0 and torch.equal(anon, data)


_PEAK_CHILD = r"""
import sys
from pathlib import Path
import torch
import nucleus

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024

before = status("VmRSS:")
lm = nucleus.load(sys.argv[1], device="cpu", dtype="bfloat16", quantize=sys.argv[2])
with torch.inference_mode():
    for n in (256, 256, 1):                  # two prefills (dense path) and one decode step
        lm.model(torch.randint(3, 32000, (1, n)))
print(status("VmHWM:") - before)
"""


def test_peak_memory_int4_below_int8_below_bf16(tmp_path):
    """The issue's measure, on a 120M-parameter model (240 MB in bf16) so it runs in seconds:
    the peak RSS that loading and running the model adds to a process, int8 and int4 against bf16.
    Before the fix int8 took 1.49x bf16's (file pages + int8 copy + a whole-weight buffer)."""
    from nucleus import architecture
    from nucleus.tokenizer import load_tokenizer

    cfg = architecture.config("nano", hidden_size=1024, intermediate_size=3584,
                              num_attention_heads=16, num_key_value_heads=4)
    architecture.build(cfg, seed=0).to(torch.bfloat16).save_pretrained(tmp_path)
    # Tokenizer files in the folder: without them each child converts mistral-common's SentencePiece
    # file, and that conversion's peak memory varied by ~80 MB between runs (made this test flaky).
    load_tokenizer().save_pretrained(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peak = {}
    # One child at a time, each mode twice, the lower peak kept: on a loaded machine (CI beside other
    # tests) single runs came out up to 110 MB above their quiet value (int8 394 MB against 246-263 MB
    # quiet, bf16 379 against 331), once putting int8 above bf16; the lower of two is the model's own.
    for _ in range(2):
        for mode in ("none", "int8", "int4"):
            p = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(tmp_path), mode], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, p.stderr[-2000:]
            peak[mode] = min(peak.get(mode, float("inf")), int(p.stdout.split()[-1]))
    assert peak["none"] > 200e6                          # the bf16 weights were really read
    assert peak["int4"] < peak["int8"] <= peak["none"], peak
