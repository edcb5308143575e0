"""Weight-only quantisation of a whole model's Linear layers, for fast CPU decoding, and the choice
of mode: int8 (nucleus/int8.py, one scale per row) or int4 (nucleus/int4.py, groups of 32 columns).

Decoding one token reads every weight once, so on a CPU the speed is set by memory bandwidth, and
fewer bytes per weight decode faster; "auto" quantises large models on CPU with whichever kernel is
faster on this machine.

Sampling is untouched: the quantised model returns logits like any other, and generation goes
through the same logits processors, so settings mean the same on every path.
"""
from __future__ import annotations

import functools
import time

import torch
from torch import nn

from .int4 import INT4_GROUP, Int4Linear, int4_fits, int4_supported, pack_int4
from .int8 import Int8Linear, file_mappings, release_if_mapped

AUTO_MIN_PARAMS = 500e6          # "auto" quantises on CPU from this size up
MODES = ("auto", "int4", "int8", "none")


# ---- whole models ------------------------------------------------------------------------------
def quantize_model(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Replace every bias-free nn.Linear (attention, MLP, lm_head) in place; the rest runs in bf16.
    mode "int4": the output layer (lm_head) and layers whose shape the int4 kernel cannot take
    (see int4_fits) get int8. The lm_head is where 4 bits cost the most: on the nano, int4 there
    alone dropped top-1 agreement with bf16 to 96.0%, every other layer in int4 only to 97.2%.
    (llama.cpp keeps it at 6 bits in its Q4_0 files for the same reason.)
    Layers are converted one at a time, and each weight's bf16 (or fp32) copy is dropped as soon as
    its quantised copy exists: freed if it was in memory, its pages released if it is memory-mapped
    from a safetensors file. So the bf16 and quantised copies of the model never coexist."""
    if mode not in ("int4", "int8"):
        raise ValueError(f"mode must be int4 or int8, got {mode!r}")
    if mode == "int4" and (reason := int4_supported()):
        raise ValueError(reason)
    mappings = file_mappings()
    names = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and mod.bias is None]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        four = mode == "int4" and linear is not head and int4_fits(linear)
        setattr(parent, child, Int4Linear(linear) if four else Int8Linear(linear))
        release_if_mapped(linear.weight, mappings)
        del linear
    model.to(torch.bfloat16)            # what is left (embeddings, norms); int buffers are not floats
    return model



@functools.cache
def fastest_cpu_mode() -> str:
    """int4 or int8, by timing both kernels here at batch 1 on one 14336 x 4096 layer (the MLP's
    shape; 59 MB in int8, so it is read from memory, not cache, as in decoding), filled with random
    codes: about 0.3 s, once per process. Both modes pass the quality gate
    (tests/test_quantize_quality.py), so "auto" takes the faster: int4 wins where decoding is bound
    by memory bandwidth, but its kernel also unpacks nibbles, so a CPU with much bandwidth and little
    compute could favour int8."""
    if int4_supported():
        return "int8"
    n_out, n_in = 14336, 4096
    gen = torch.Generator().manual_seed(0)
    q8 = torch.randint(-127, 128, (n_out, n_in), generator=gen, dtype=torch.int8)
    s8 = torch.full((n_out,), 0.01, dtype=torch.bfloat16)
    q4 = pack_int4(torch.randint(0, 16, (n_out, n_in), generator=gen, dtype=torch.int32))
    sz = torch.full((n_in // INT4_GROUP, n_out, 2), 0.01, dtype=torch.bfloat16)
    kernels = {"int4": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q4, INT4_GROUP, sz),
               "int8": lambda x: torch.ops.aten._weight_int8pack_mm(x, q8, s8)}
    x = torch.randn(1, n_in, generator=gen).to(torch.bfloat16)
    best = {}
    with torch.inference_mode():
        for _ in range(2):                         # alternate, so a burst of load hits both
            for mode, kernel in kernels.items():
                kernel(x)                          # warm-up
                t = time.perf_counter()
                for _ in range(10):
                    kernel(x)
                best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - t)
    return "int4" if best["int4"] <= best["int8"] else "int8"


def resolve_mode(mode: str, device: torch.device, n_params: int) -> str:
    """'int4', 'int8' or 'none'. auto quantises on CPU for models of >= 500M parameters, where
    decoding is bound by reading the weights, with the faster kernel on this machine; small models
    and GPUs keep their weights as they are."""
    if mode not in MODES:
        raise ValueError(f"quantize must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return fastest_cpu_mode() if device.type == "cpu" and n_params >= AUTO_MIN_PARAMS else "none"
    if mode in ("int4", "int8") and device.type != "cpu":
        raise ValueError(f"{mode} weight-only quantisation is the CPU path; on a GPU use --quantize none "
                         "(quantize='none')")
    if mode == "int4" and (reason := int4_supported()):
        raise ValueError(reason)
    return mode
