"""Weight-only int8 and int4 quantisation of the Linear layers, for fast CPU decoding.

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

int4 halves the bytes again. Each Linear's weight is split into groups of INT4_GROUP input
columns; each group gets a bf16 scale and zero point (asymmetric, min to max, round-to-nearest),
the layout PyTorch's own CPU kernel `aten._weight_int4pack_mm_for_cpu` reads: weight =
(q - 8) * scale + zero, q in 0..15. Decode runs that kernel; prefill de-quantises blocks of rows
into the same shared buffer as int8 and runs a dense bf16 matmul.

Sampling is untouched: the quantised model returns logits like any other, and generation goes
through the same logits processors, so settings mean the same on every path.
"""
from __future__ import annotations

import bisect
import ctypes
import functools
import mmap
import threading
import time
from pathlib import Path

import torch
from torch import nn

# Above this many rows (prompt tokens x batch) a dense bf16 matmul on the dequantised weight beats
# the GEMV-oriented int8 kernel: prefill is compute-bound, decode is bandwidth-bound.
DENSE_ROWS = 32
AUTO_MIN_PARAMS = 500e6          # "auto" quantises on CPU from this size up
MODES = ("auto", "int4", "int8", "none")
# int4 group size: input columns that share one scale and zero point. The kernel takes 32, 64, 128
# or 256. Measured (README "CPU serving"): the kernel's speed barely depends on it (14336 x 4096 at
# batch 1: 0.82 ms at 32, 0.80 ms at 128), while on the nano the quality gate's top-1 agreement
# was 97.5% at 32, 96.7% at 64 and 95.3% at 128. So 32, as llama.cpp's Q4_0.
INT4_GROUP = 32
# Above this many rows the int4 kernel (which de-quantises the weights again for every 4 rows) loses
# to de-quantising once into the scratch buffer and a dense matmul. 14336 x 4096 layer, quiet 2-core
# machine: kernel 5.8 ms against 24.0 ms at 16 rows, 22.8 against 22.5 at 64, 183 against 78 at 512.
INT4_DENSE_ROWS = 64
QUANT_BLOCK_ELEMS = 4 * 2**20    # weights quantised at once: two fp32 blocks of 16 MB
# Prefill de-quantises this many bytes of weight rows at a time. Measured on the 1.13B, 512-token
# prompt, CPU time of one thread: 2.36 s with a whole-weight buffer, 2.36 s with 16 MB blocks,
# 2.57 s with 4 MB blocks computed as y.T; per layer, small blocks lose most on down_proj, whose
# 14336-wide rows make 4 MB only 146 rows: a poor matmul shape.
PREFILL_BLOCK_BYTES = 16 * 2**20


# ---- the prefill scratch buffer -----------------------------------------------------------------
class _PrefillScratch:
    """One bf16 buffer for the whole process, shared by every thread under a lock (generation runs
    one request at a time anyway). It is allocated once, so a request in a new thread does not pay
    for fresh pages; `allocations` counts how often that happened (tests read it)."""

    def __init__(self, nbytes: int):
        self.elems = nbytes // 2               # bf16: 2 bytes per element
        self.lock = threading.Lock()
        self.buf: torch.Tensor | None = None
        self.allocations = 0

    def block_rows(self, width: int) -> int:
        return max(1, self.elems // width)

    def view(self, rows: int, width: int) -> torch.Tensor:
        """(rows, width) bf16 view of the buffer; call with `lock` held."""
        n = rows * width
        if self.buf is None or self.buf.numel() < n:   # grows only for rows wider than the block
            self.buf = torch.empty(max(n, self.elems), dtype=torch.bfloat16)
            self.allocations += 1
        return self.buf[:n].view(rows, width)


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


class _QuantLinear(nn.Module):
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
        """x2 @ W.T, de-quantising a block of weight rows at a time into SCRATCH."""
        y = torch.empty(x2.shape[0], self.out_features, dtype=torch.bfloat16)     # (rows, out)
        step = max(self.row_multiple, SCRATCH.block_rows(self.in_features) // self.row_multiple * self.row_multiple)
        with SCRATCH.lock:
            for i in range(0, self.out_features, step):
                n = min(step, self.out_features - i)
                y[:, i:i + n] = x2 @ self._block_t(i, n, SCRATCH.view(n, self.in_features).view(-1))
        return self._dense_done(y)

    def _dense_done(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def dequantize(self) -> torch.Tensor:
        """The whole weight in bf16 (tests and tools; serving never materialises it)."""
        out = torch.empty(self.out_features * self.in_features, dtype=torch.bfloat16)
        return self._block_t(0, self.out_features, out).t()


class Int8Linear(_QuantLinear):
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
        """Rows i..i+n as bf16, transposed ((in, n), a view), *without* their scale: the dense path
        applies the per-row scale to the output columns instead (one multiply per output, not per
        weight)."""
        return out[:n * self.in_features].view(n, self.in_features).copy_(self.weight_int8[i:i + n]).t()

    def _dense_done(self, y: torch.Tensor) -> torch.Tensor:
        return y.mul_(self.scale)                                            # per-row scale = per output column

    def dequantize(self) -> torch.Tensor:
        return super().dequantize().mul_(self.scale[:, None])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row"


# ---- int4 --------------------------------------------------------------------------------------
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


class Int4Linear(_QuantLinear):
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
        """Rows i..i+n of the weight, de-quantised and transposed: an (in, n) bf16 view of `out`."""
        d = unpack_int4_t(self.weight_int4[i:i + n], out)                         # (in, n): q
        sz = self.scale_zeros[:, i:i + n].float()                                   # (groups, n, 2)
        # contiguous (groups, n) operands: strided ones made the pass below 3x slower
        scale, shift = sz[..., 0].to(torch.bfloat16), (sz[..., 1] - 8 * sz[..., 0]).to(torch.bfloat16)
        d3 = d.view(self.in_features // self.group, self.group, n)
        # (q - 8) * scale + zero = q * scale + (zero - 8 * scale), in one pass
        torch.addcmul(shift[:, None], d3, scale[:, None], out=d3)
        return d

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group}"


def int4_fits(linear: nn.Linear, group: int = INT4_GROUP) -> bool:
    bn = _int4_block_n()
    return bn is not None and linear.in_features % group == 0 and linear.out_features % bn == 0


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


def quantize_int8(model: nn.Module) -> nn.Module:
    return quantize_model(model, "int8")


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
