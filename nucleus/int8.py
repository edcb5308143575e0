"""Weight-only int8 Linear layers, and what every quantised layer shares: the bf16 prefill path
through one scratch buffer, and handing back the pages of memory-mapped weights.

Decoding one token reads every weight once, so on a CPU the speed is set by memory bandwidth:
int8 weights are half the bytes of bf16. Each Linear's weight is stored as int8 with one scale per
output row (symmetric, round-to-nearest); activations stay bf16. The matmul is PyTorch's own fused
CPU kernel `aten._weight_int8pack_mm`, which reads the int8 weights directly.

Why not torchao's Int8WeightOnlyConfig: on this CPU, in eager mode, it dequantises each weight
before a dense matmul and measured 8x slower than dense bf16 for a 14336x4096 layer at batch 1,
while the fused kernel measured 2.3x faster than dense bf16 (same process, same machine).

Memory: transformers memory-maps the bf16 safetensors, and the weights' pages become resident as
they are read. Quantising reads each weight once; without care its bf16 pages stay resident
beside the int8 copy, and the int8 model peaked at 1.41x the bf16 model's RSS (1.13B, 2 cores).
So each file-backed weight's pages are handed back to the kernel as soon as its int8 copy exists
(the file is unchanged, so the pages would simply be read again if anyone touched them), and
prefill de-quantises a few rows at a time into one small shared buffer instead of a whole
weight (the lm_head: 262 MB in bf16).
"""
from __future__ import annotations

import bisect
import ctypes
import functools
import mmap
import threading
from pathlib import Path

import torch
from torch import nn

# Above this many rows (prompt tokens x batch) a dense bf16 matmul on the dequantised weight beats
# the GEMV-oriented int8 kernel: prefill is compute-bound, decode is bandwidth-bound.
DENSE_ROWS = 32
QUANT_BLOCK_ELEMS = 4 * 2**20    # weights quantised at once: two fp32 blocks of 16 MB
# Prefill de-quantises this many bytes of weight rows at a time. Measured on the 1.13B, 512-token
# prompt, CPU time of one thread: 2.36 s with a whole-weight buffer, 2.36 s with 16 MB blocks,
# 2.57 s with 4 MB blocks computed as y.T; per layer, small blocks lose most on down_proj, whose
# 14336-wide rows make 4 MB only 146 rows: a poor matmul shape.
PREFILL_BLOCK_BYTES = 16 * 2**20


@functools.cache
def dense_dtype() -> torch.dtype:
    """The dtype of prefill's dense matmuls. On a CPU without native bf16 (AVX2 only: no AVX-512
    BF16 or AMX, as oneDNN reports), PyTorch's bf16 matmul is emulated and, for the layout prefill
    hands it, pathologically slow: on a 2-core AMD EPYC (AVX2) one 128-row block of a 14336 x 4096
    layer took 1.97 s in bf16 against 0.028 s converted to fp32 (0.11 s in bf16 in nn.Linear's own
    layout), and a 128-token prompt took 671 s to its first token on the 1.13B in int4. So such a
    CPU de-quantises and multiplies in fp32 (the bf16 values are exact in fp32), in the same 16 MB
    scratch buffer (half the rows per block), so prefill's peak memory does not grow."""
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


# ---- the prefill scratch buffer -----------------------------------------------------------------
class _PrefillScratch:
    """One buffer of `nbytes` for the whole process, shared by every thread under a lock (generation
    runs one request at a time anyway), viewed in the dense matmul's dtype (bf16, or fp32 where the
    CPU has no native bf16: half the rows per block then, the same bytes). It is allocated once, so
    a request in a new thread does not pay for fresh pages; `allocations` counts how often that
    happened (tests read it)."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.lock = threading.Lock()
        self.buf: torch.Tensor | None = None   # uint8
        self.allocations = 0

    def block_rows(self, width: int, dtype: torch.dtype | None = None) -> int:
        size = (dtype or dense_dtype()).itemsize
        return max(1, self.nbytes // size // width)

    def view(self, rows: int, width: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(rows, width) view of the buffer in `dtype` (default dense_dtype()); call with `lock` held."""
        dtype = dtype or dense_dtype()
        n = rows * width * dtype.itemsize
        if self.buf is None or self.buf.numel() < n:   # grows only for rows wider than the block
            self.buf = torch.empty(max(n, self.nbytes), dtype=torch.uint8)
            self.allocations += 1
        return self.buf[:n].view(dtype).view(rows, width)


SCRATCH = _PrefillScratch(PREFILL_BLOCK_BYTES)


# ---- handing back the pages of memory-mapped weights ---------------------------------------------
# Linux only; elsewhere (no /proc/self/maps or no madvise) release is a no-op and peak memory is
# what it was before this existed.
_MADV_DONTNEED = 4
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError, TypeError):   # TypeError: Windows has no CDLL(None)
    _madvise = None


def file_mappings() -> list[tuple[int, int]]:
    """Sorted (start, end) addresses of this process's file-backed memory mappings."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    spans = []
    for line in lines:
        # "start-end perms offset dev inode [path]"; inode 0 = anonymous, [heap], [stack], ...
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
            start, end = (int(a, 16) for a in fields[0].split("-"))
            spans.append((start, end))
    return sorted(spans)


def release_if_mapped(t: torch.Tensor, mappings: list[tuple[int, int]]) -> int:
    """Drop the resident pages of `t` if it lies inside a file mapping; returns the bytes released.
    MADV_DONTNEED on a file mapping only unmaps the pages from this process: the data stays in
    the file, so a later read faults it back in unchanged. Anonymous memory is never touched
    (there, DONTNEED would zero it). Only pages wholly inside the tensor are released, so a
    neighbour sharing a boundary page keeps it."""
    if _madvise is None or t.device.type != "cpu" or not mappings:
        return 0
    start, nbytes = t.data_ptr(), t.numel() * t.element_size()
    i = bisect.bisect_right(mappings, (start, float("inf"))) - 1
    if i < 0 or not (mappings[i][0] <= start and start + nbytes <= mappings[i][1]):
        return 0
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + nbytes) // page * page
    if hi <= lo or _madvise(lo, hi - lo, _MADV_DONTNEED) != 0:
        return 0
    return hi - lo


# ---- the layer -----------------------------------------------------------------------------------
def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, bf16 per-row scale) of a 2-D weight. The scale is rounded to bf16 *before*
    quantising, so q * scale de-quantises with exactly the scale the rows were divided by.
    Works in place in two reused fp32 blocks, because quantising is part of a Space's start-up:
    CPU time for the 1.13B's lm_head, one thread, 1.22 s with fresh temporaries per step, 0.16 s."""
    q = torch.empty(w.shape, dtype=torch.int8)                               # (out, in)
    scale = torch.empty(w.shape[0], dtype=torch.bfloat16)                    # (out,)
    step = max(1, QUANT_BLOCK_ELEMS // w.shape[1])                           # rows per block
    block = torch.empty(min(step, w.shape[0]), w.shape[1])                   # fp32 (step, in)
    mag = torch.empty_like(block)                                            # |block|
    for i in range(0, w.shape[0], step):
        src = w[i:i + step]
        rows = block[:len(src)].copy_(src)
        s = torch.abs(rows, out=mag[:len(src)]).amax(dim=1).div_(127.0).clamp_(min=1e-12).to(torch.bfloat16)
        # bf16 rounding may shrink s by up to 2^-9, pushing the row's largest value to ~127.25:
        # the clamp costs it less than half a quantisation step.
        q[i:i + step] = rows.div_(s.float()[:, None]).round_().clamp_(-127, 127)
        scale[i:i + step] = s
    return q, scale


class QuantLinear(nn.Module):
    """What the int8 and int4 layers share: a fused low-bit kernel for the few rows of decoding,
    and for prefill a dense bf16 matmul on weights de-quantised a block of rows at a time."""

    dense_rows = DENSE_ROWS
    row_multiple = 1               # de-quantised blocks start at multiples of this many rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)              # (rows, in)
        if x2.shape[0] > self.dense_rows:                                    # prefill: compute-bound
            y = self._dense(x2)
        else:                                                                # decode: bandwidth-bound
            y = self._kernel(x2)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _dense(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 @ W.T, de-quantising a block of weight rows at a time into SCRATCH; the matmul in
        dense_dtype() (bf16 where the CPU multiplies bf16 natively, else fp32)."""
        y = torch.empty(x2.shape[0], self.out_features, dtype=torch.bfloat16)     # (rows, out)
        step = max(self.row_multiple, SCRATCH.block_rows(self.in_features) // self.row_multiple * self.row_multiple)
        xd = x2.to(dense_dtype())                                             # the block is de-quantised in it
        with SCRATCH.lock:
            for i in range(0, self.out_features, step):
                n = min(step, self.out_features - i)
                y[:, i:i + n] = xd @ self._block_t(i, n, SCRATCH.view(n, self.in_features).view(-1))
        return self._dense_done(y)

    def _dense_done(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def dequantize(self) -> torch.Tensor:
        """The whole weight in bf16 (tests and tools; serving never materialises it)."""
        out = torch.empty(self.out_features * self.in_features, dtype=torch.bfloat16)
        return self._block_t(0, self.out_features, out).t()


class Int8Linear(QuantLinear):
    """Drop-in for nn.Linear (no bias, as in Mistral) with an int8 weight and per-row scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear expects a Linear without bias (Mistral has none)")
        q, scale = quantize_rows(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)

    def _kernel(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale)

    def _block_t(self, i: int, n: int, out: torch.Tensor) -> torch.Tensor:
        """Rows i..i+n in out's dtype, transposed ((in, n), a view), *without* their scale: the dense path
        applies the per-row scale to the output columns instead (one multiply per output, not per
        weight)."""
        return out[:n * self.in_features].view(n, self.in_features).copy_(self.weight_int8[i:i + n]).t()

    def _dense_done(self, y: torch.Tensor) -> torch.Tensor:
        return y.mul_(self.scale)                                            # per-row scale = per output column

    def dequantize(self) -> torch.Tensor:
        return super().dequantize().mul_(self.scale[:, None])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"

