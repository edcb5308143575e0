"""Weight-only int4 Linear layers: the packed layout of PyTorch's int4 CPU kernel, and Int4Linear.

int4 halves the bytes of int8 (nucleus/int8.py). Each Linear's weight is split into groups of
INT4_GROUP input columns; each group gets a bf16 scale and zero point (asymmetric, min to max,
round-to-nearest), the layout PyTorch's own CPU kernel `aten._weight_int4pack_mm_for_cpu` reads:
weight = (q - 8) * scale + zero, q in 0..15. Decode runs that kernel; prefill de-quantises blocks of
rows into the same shared buffer as int8 and runs a dense bf16 matmul.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .int8 import QUANT_BLOCK_ELEMS, QuantLinear

# int4 group size: input columns that share one scale and zero point. The kernel takes 32, 64, 128
# or 256. Measured (docs/benchmarks.md, "CPU serving"): the kernel's speed barely depends on it (14336 x 4096 at
# batch 1: 0.82 ms at 32, 0.80 ms at 128), while on the nano the quality gate's top-1 agreement
# was 97.5% at 32, 96.7% at 64 and 95.3% at 128. So 32, as llama.cpp's Q4_0.
INT4_GROUP = 32
# Above this many rows the int4 kernel (which de-quantises the weights again for every 4 rows) loses
# to de-quantising once into the scratch buffer and a dense matmul. 14336 x 4096 layer, quiet 2-core
# machine: kernel 5.8 ms against 24.0 ms at 16 rows, 22.8 against 22.5 at 64, 183 against 78 at 512.
INT4_DENSE_ROWS = 64


# ---- the kernel's packed layout ------------------------------------------------------------------
# `_convert_weight_to_int4pack_for_cpu` lays the nibbles out for the CPU's vector width: blocks of
# BLOCK_N output rows, and inside a block, for each input column, the low nibbles hold the first
# half of the block's rows and the high nibbles the second half (AVX-512: 64 rows, AVX2: 32). The
# prefill path has to read them back; the layout is checked against the kernel's own packing
# before the first weight is converted (`int4_supported`), so a PyTorch that changes it is caught.
_INT4_BLOCK_N = {"AVX512": 64, "AVX2": 32}


def _int4_block_n() -> int | None:
    return _INT4_BLOCK_N.get(torch.backends.cpu.get_cpu_capability())


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(out, in) int32 values 0..15 -> the kernel's packed (out, in/2) uint8, a block of rows at a
    time so that a 32000-row lm_head never needs a whole int32 copy (512 MB)."""
    bn = _int4_block_n()
    out = torch.empty(q.shape[0], q.shape[1] // 2, dtype=torch.uint8)
    step = max(bn, QUANT_BLOCK_ELEMS // q.shape[1] // bn * bn)
    for i in range(0, q.shape[0], step):
        out[i:i + step] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i:i + step].to(torch.int32), 1)
    return out


def unpack_int4_t(packed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The 0..15 values of packed rows (whole BLOCK_N row groups), transposed: an (in, rows) view of
    `out` (flat, any dtype, >= in * rows elements). Transposed because that is how the kernel stores
    them: for each block of BLOCK_N output rows, input column by input column. So unpacking copies
    runs of BLOCK_N/2 bytes instead of scattering single nibbles (14336 x 4096 layer, 2 cores:
    14.6 ms with the de-quantising pass, against 47 ms un-transposing)."""
    bn = _int4_block_n()
    rows, k = packed.shape[0], packed.shape[1] * 2
    p = packed.view(rows // bn, k, bn // 2).transpose(0, 1)                  # (in, blocks, bn/2)
    d = out[:k * rows].view(k, rows // bn, bn)
    d[..., :bn // 2].copy_(p & 15)                     # low nibbles: each block's first half of rows
    d[..., bn // 2:].copy_(p >> 4)                     # high nibbles: the second half
    return out[:k * rows].view(k, rows)


def unpack_int4(packed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: writes the 0..15 values into `out` ((rows, in)) and returns it."""
    return out.copy_(unpack_int4_t(packed, torch.empty(out.numel(), dtype=out.dtype)).t())


@functools.cache
def int4_supported() -> str | None:
    """None when the int4 kernel can be used here, else the reason it cannot."""
    bn = _int4_block_n()
    if bn is None or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return (f"int4 needs PyTorch's int4 CPU kernel on an x86 CPU with AVX2 or AVX-512 "
                f"(this CPU: {torch.backends.cpu.get_cpu_capability()})")
    q = torch.randint(0, 16, (2 * bn, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    if not torch.equal(unpack_int4(pack_int4(q), torch.empty_like(q)), q):
        return "int4: this PyTorch packs int4 weights in a layout Nucleus does not know; use int8"
    return None


# ---- the layer -----------------------------------------------------------------------------------
def quantize_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int4 weight, (in/group, out, 2) bf16 scales and zero points) of a 2-D weight: each
    group's min to max mapped onto 0..15 by w = (q - 8) * scale + zero. Scale and zero are rounded
    to bf16 before quantising, so the kernel de-quantises with exactly the values the rows were
    quantised against. Works a block of rows at a time, as quantize_rows.
    (A search over clipped ranges, keeping each group's least squared error, did not raise the
    quality gate's top-1 agreement on the nano: 97.2% against 97.5% at group 32; so no search.)"""
    n_out, n_in = w.shape
    bn = _int4_block_n()
    packed = torch.empty(n_out, n_in // 2, dtype=torch.uint8)
    sz = torch.empty(n_in // group, n_out, 2, dtype=torch.bfloat16)
    step = max(bn, QUANT_BLOCK_ELEMS // n_in // bn * bn)
    for i in range(0, n_out, step):
        g = w[i:i + step].to(torch.float32, copy=True).view(-1, n_in // group, group)  # (rows, groups, group)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp_(min=1e-12).to(torch.bfloat16)
        zero = (lo + 8 * scale.float()).to(torch.bfloat16)
        q = g.sub_(zero.float()[..., None]).div_(scale.float()[..., None]).add_(8).round_().clamp_(0, 15)
        packed[i:i + step] = pack_int4(q.view(-1, n_in).to(torch.int32))
        sz[:, i:i + step, 0], sz[:, i:i + step, 1] = scale.t(), zero.t()
    return packed, sz


class Int4Linear(QuantLinear):
    """Drop-in for nn.Linear (no bias) with int4 weights in groups of `group` input columns."""

    dense_rows = INT4_DENSE_ROWS

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int4Linear expects a Linear without bias (Mistral has none)")
        if not int4_fits(linear, group):
            raise ValueError(f"int4 needs in_features divisible by {group} and out_features by "
                             f"{_int4_block_n()}; got {linear.in_features}, {linear.out_features}")
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        self.row_multiple = _int4_block_n()
        packed, sz = quantize_groups(linear.weight.detach(), group)
        self.register_buffer("weight_int4", packed)
        self.register_buffer("scale_zeros", sz)

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_int4, self.group, self.scale_zeros)

    def _block_t(self, i: int, n: int, out: torch.Tensor) -> torch.Tensor:
        """Rows i..i+n of the weight, de-quantised and transposed: an (in, n) view of `out`, in its dtype."""
        d = unpack_int4_t(self.weight_int4[i:i + n], out)                         # (in, n): q
        sz = self.scale_zeros[:, i:i + n].float()                                   # (groups, n, 2)
        # contiguous (groups, n) operands: strided ones made the pass below 3x slower
        scale, shift = sz[..., 0].to(d.dtype), (sz[..., 1] - 8 * sz[..., 0]).to(d.dtype)     # bf16 or fp32
        d3 = d.view(self.in_features // self.group, self.group, n)
        # (q - 8) * scale + zero = q * scale + (zero - 8 * scale), in one pass
        torch.addcmul(shift[:, None], d3, scale[:, None], out=d3)
        return d

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group}"


def int4_fits(linear: nn.Linear, group: int = INT4_GROUP) -> bool:
    bn = _int4_block_n()
    return bn is not None and linear.in_features % group == 0 and linear.out_features % bn == 0

