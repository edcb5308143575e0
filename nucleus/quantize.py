"""Weight-only int8 quantisation of the Linear layers, for fast CPU decoding.

Decoding one token reads every weight once, so on a CPU the speed is set by memory bandwidth:
int8 weights are half the bytes of bf16. Each Linear's weight is stored as int8 with one scale per
output row (symmetric, round-to-nearest); activations stay bf16. The matmul is PyTorch's own fused
CPU kernel `aten._weight_int8pack_mm`, which reads the int8 weights directly.

Why not torchao's Int8WeightOnlyConfig: on this CPU, in eager mode, it dequantises each weight
before a dense matmul and measured 8x slower than dense bf16 for a 14336x4096 layer at batch 1,
while the fused kernel measured 2.3x faster than dense bf16 (same process, same machine).

Sampling is untouched: the quantised model returns logits like any other, and generation goes
through the same logits processors, so settings mean the same on both paths.
"""
from __future__ import annotations

import threading

import torch
from torch import nn

# Above this many rows (prompt tokens x batch) a dense bf16 matmul on the dequantised weight beats
# the GEMV-oriented int8 kernel: prefill is compute-bound, decode is bandwidth-bound.
DENSE_ROWS = 32
AUTO_MIN_PARAMS = 500e6          # "auto" quantises on CPU from this size up
MODES = ("auto", "int8", "none")

# Prefill converts a weight to bf16 before a dense matmul. Into a fresh tensor that costs ~2x the
# matmul (page faults on a new 100+ MB allocation); into a reused buffer, ~10% of it. One buffer
# per thread, grown to the largest weight (the lm_head: 32000 x 4096 bf16 = 262 MB for Nucleus-1B).
_scratch = threading.local()


def _bf16_buffer(shape: torch.Size) -> torch.Tensor:
    n = shape[0] * shape[1]
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _scratch.buf = torch.empty(n, dtype=torch.bfloat16)
    return buf[:n].view(shape)


class Int8Linear(nn.Module):
    """Drop-in for nn.Linear (no bias, as in Mistral) with an int8 weight and per-row scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear expects a Linear without bias (Mistral has none)")
        w = linear.weight.detach()                                           # (out, in)
        q = torch.empty(w.shape, dtype=torch.int8)
        scale = torch.empty(w.shape[0])
        for i in range(0, w.shape[0], 2048):      # fp32 in row chunks: no full-size fp32 copy
            rows = w[i:i + 2048].float()
            s = (rows.abs().amax(dim=1) / 127.0).clamp(min=1e-12)           # (chunk,)
            q[i:i + 2048] = torch.round(rows / s[:, None]).clamp(-127, 127)
            scale[i:i + 2048] = s
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)              # (rows, in)
        if x2.shape[0] > DENSE_ROWS:                                         # prefill: compute-bound
            w = _bf16_buffer(self.weight_int8.shape).copy_(self.weight_int8)
            y = (x2 @ w.t()) * self.scale                                    # per-row scale = per output column
        else:                                                                # decode: bandwidth-bound
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every bias-free nn.Linear (attention, MLP, lm_head) in place; the rest runs in bf16.
    Layers are converted one at a time and each bf16 weight is dropped as soon as its int8 copy
    exists, so peak memory stays near the bf16 model's size."""
    model.to(torch.bfloat16)
    names = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and mod.bias is None]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(getattr(parent, child)))
    return model


def resolve_mode(mode: str, device: torch.device, n_params: int) -> str:
    """'int8' or 'none': auto picks int8 on CPU for models of >= 500M parameters, where decoding is
    bound by reading the weights; small models and GPUs keep their weights as they are."""
    if mode not in MODES:
        raise ValueError(f"quantize must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "int8" if device.type == "cpu" and n_params >= AUTO_MIN_PARAMS else "none"
    if mode == "int8" and device.type != "cpu":
        raise ValueError("int8 weight-only quantisation is the CPU path; on a GPU use quantize='none'")
    return mode
