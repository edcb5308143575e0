"""Per-token time of our decode loop against the weight layers' own time, in one process.

    python bench/decode_speed.py                       # random 1.13B, int4, the page's path (records on)
    python bench/decode_speed.py --quantize int8 --runs 5
    python bench/decode_speed.py --model models/nucleus-nano --quantize none
    python bench/decode_speed.py --static              # the static cache (and --compile: torch.compile on CPU)

What it measures, on one loaded model, alternating the cases run by run so load drifts hit all:
- floor: every module that holds over a million weight elements (the embedding, each attention and
  MLP projection, the output layer) called once, in model order, on its own input of one decode
  step, after a warm-up pass; the sum of their times is what reading the weights costs per token;
- ours: decode time per token of `lm.stream` (temperature 0.8, top-p 0.9, repetition penalty 1.5,
  --tokens new tokens), first token (the prefill) excluded, with the page's records (10 candidates
  per token at every sampling stage) and without;
- hf: plain transformers `generate` on the same model and settings, per token, prefill excluded.
It prints each figure's median and every run, and the ratios ours / floor (the issue's goal:
<= 1.15 with records on) and records on / off. Not a test: timings vary with load; the load average
and the CPU are printed with the figures.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import nucleus
from bench.space_rehearsal import make_checkpoint
from nucleus.tokenizer import encode_prompt

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "### Lesson: The Water Cycle\n### Introduction\n"


def weight_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """Leaf modules holding over a million weight elements, in model order."""
    out = []
    for name, mod in model.named_modules():
        if next(mod.children(), None) is None:
            n = sum(t.numel() for t in (*mod.parameters(recurse=False), *mod.buffers(recurse=False)))
            if n > 1e6:
                out.append((name, mod))
    return out


def floor_seconds(model, passes: int = 7) -> float:
    """Passes over the weight modules, each module once per pass on one decode step's input, after a
    warm-up pass (so that each is timed in the cache state a real step leaves it in); the median
    pass (one pass alone varied by +-15% on a 2-core VM)."""
    mods = weight_modules(model)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    inputs = []
    for name, mod in mods:
        if isinstance(mod, torch.nn.Embedding):
            inputs.append(torch.tensor([[5]]))
        else:
            width = inter if name.endswith("down_proj") else hidden
            inputs.append(torch.randn(1, 1, width).to(torch.bfloat16 if model.dtype != torch.float32 else model.dtype))
    totals = []
    with torch.inference_mode():
        for (_, mod), x in zip(mods, inputs):
            mod(x)
        for _ in range(passes):
            total = 0.0
            for (_, mod), x in zip(mods, inputs):
                t = time.perf_counter()
                mod(x)
                total += time.perf_counter() - t
            totals.append(total)
    return statistics.median(totals)


def ours_seconds(lm, settings, record: int) -> float:
    """Decode seconds per token through lm.stream, the first token (prefill) excluded."""
    first = last = None
    n = 0
    for update in lm.stream(PROMPT, settings, record=record):
        now = time.perf_counter()
        if not update.done:
            first = first if first is not None else (now, update.tokens)
            last, n = now, update.tokens
    return (last - first[0]) / (n - first[1])


def hf_seconds(lm, settings) -> float:
    """Plain generate, per token: (time for N tokens - time for 1 token) / (N - 1)."""
    ids = torch.tensor([encode_prompt(lm.tokenizer, PROMPT)])
    cfg = settings.to_generation_config(lm.tokenizer.eos_token_id)
    cfg.min_new_tokens = settings.max_new_tokens        # no early EOS: the same number of steps every run

    def timed(n):
        cfg.max_new_tokens, cfg.min_new_tokens = n, n
        torch.manual_seed(settings.seed)
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        return time.perf_counter() - t

    one, many = timed(1), timed(settings.max_new_tokens)
    return (many - one) / (settings.max_new_tokens - 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model folder (default: the random 1.13B, made once under runs/)")
    p.add_argument("--quantize", default="int4", help="int4 (default), int8, none, auto")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--static", action="store_true", help="NUCLEUS_STATIC_CACHE=on (the static cache on CPU)")
    p.add_argument("--no-hf", action="store_true", help="skip plain generate")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.static:
        os.environ["NUCLEUS_STATIC_CACHE"] = "on"
    path = args.model or str(make_checkpoint(ROOT / "runs" / "space-rehearsal" / "nucleus-1b-random"))
    t = time.perf_counter()
    lm = nucleus.load(path, quantize=args.quantize)
    loaded = time.perf_counter() - t
    settings = nucleus.SamplingSettings(temperature=0.8, top_p=0.9, repetition_penalty=1.5,
                                        max_new_tokens=args.tokens, seed=1)
    t = time.perf_counter()
    ours_seconds(lm, settings.replace(max_new_tokens=4), 10)                # warm-up (and any compile)
    warm = time.perf_counter() - t
    cases = {"floor": lambda: floor_seconds(lm.model), "records on": lambda: ours_seconds(lm, settings, 10),
             "records off": lambda: ours_seconds(lm, settings, 0)}
    if not args.no_hf:
        cases["hf generate"] = lambda: hf_seconds(lm, settings)
    load_before = os.getloadavg()[0]
    got = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, fn in cases.items():
            got[name].append(fn())
    report(args, lm, got, loaded, warm, load_before)
    return got


def report(args, lm, got, loaded, warm, load_before) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    med = {k: statistics.median(v) for k, v in got.items()}
    print(f"\n{lm.describe()}\nCPU: {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; load {loaded:.1f} s, "
          f"first run {warm:.1f} s; static cache {'on' if args.static else 'off'}\n")
    print("| case | ms per token, median | every run | / floor |\n|---|---|---|---|")
    for name, values in got.items():
        print(f"| {name} | {1e3 * med[name]:.2f} | {', '.join(f'{1e3 * v:.2f}' for v in values)} | "
              f"{med[name] / med['floor']:.3f} |")
    per_run = [on / fl for on, fl in zip(got["records on"], got["floor"])]
    print(f"\nours (records on) / floor: {med['records on'] / med['floor']:.3f} (runs: "
          f"{', '.join(f'{r:.3f}' for r in per_run)}); records cost "
          f"{100 * (med['records on'] / med['records off'] - 1):.1f}% of the records-off time per token")
    if "hf generate" in med:
        print(f"plain generate / ours (records off): {med['hf generate'] / med['records off']:.2f}x the time per token")


if __name__ == "__main__":
    main()
