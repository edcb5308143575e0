"""GPU serving at batch 1: plain `generate` against the product's own decode loop.

    PYTHONPATH=. python bench/serve_gpu.py --out /tmp/serve          # one GPU, the 1.13B shape (bf16)
    PYTHONPATH=. python bench/serve_gpu.py --cpu-smoke --out /tmp/s  # no GPU: tiny model, a few tokens

Paths on the same random-weight model (throughput does not depend on the values):
  hf_eager        `model.generate`, dynamic cache; batch 1 and 16 (the reference figures)
  hf_static       `model.generate(cache_implementation="static")`: transformers compiles the forward
  ours_static     nucleus's decode loop as the Space runs it on a GPU (NUCLEUS_STATIC_CACHE=on): one
                  StaticCache, the one-token forward compiled with CUDA graphs, transformers' own
                  processors and a seeded draw, eager; with the page's records (10 candidates per
                  token at every stage) and without
  ours_dynamic    the same loop with a DynamicCache (NUCLEUS_STATIC_CACHE=off)
Each reports tokens/s and ms per token for N new tokens after a short prompt (the prefill excluded
for ours: its first update is the clock's start), and time to first token (TTFT) for a long prompt.
Sampling: temperature 0.8, top-p 0.9 (as ../shared/baselines). Called by bench/gpu_suite.py; prints
one JSON line per row, each as soon as it is measured (a failing case is a row with `error`).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import torch

from nucleus import architecture

TEMPERATURE, TOP_P = 0.8, 0.9
PROMPT = "### Lesson: Bees\n### Introduction\n"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(size: str, device: torch.device):
    """Random weights in bf16 on `device` (fp32 on CPU: bf16 matmuls are slow there)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = architecture.build(size, device=device, seed=0).to(dtype).eval()
    model.config.use_cache = True
    return model


# ---- plain generate -------------------------------------------------------------------------------
def hf_generate(model, prompt, new: int, static: bool = False):
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P,
              pad_token_id=0)
    if static:
        kw["cache_implementation"] = "static"
    with torch.inference_mode():
        return model.generate(prompt, **kw)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def hf_row(name, model, prompt, new, device, static=False, warm: int = 1) -> dict:
    for _ in range(warm):
        hf_generate(model, prompt, new, static)
    out, dt = timed(lambda: hf_generate(model, prompt, new, static), device)
    produced = out.shape[1] - prompt.shape[1]
    return {"case": name, "batch": prompt.shape[0], "new_tokens": produced,
            "tok_per_s": round(produced * prompt.shape[0] / dt, 1), "ms_per_step": round(dt / produced * 1000, 3)}


def hf_ttft(model, prompt, device) -> dict:
    hf_generate(model, prompt, 1)
    _, dt = timed(lambda: hf_generate(model, prompt, 1), device)
    return {"case": "hf_eager", "prompt_tokens": prompt.shape[1], "ttft_ms": round(dt * 1000, 2)}


# ---- ours: the product's loop ---------------------------------------------------------------------
def local_model(model, tokenizer_dir: str | None, device):
    from nucleus.local import LoadedModel
    from nucleus.tokenizer import load_tokenizer

    return LoadedModel(model, load_tokenizer(tokenizer_dir), "random", Path(tokenizer_dir or "."), device,
                       next(model.parameters()).dtype, sum(p.numel() for p in model.parameters()))


def ours_rows(lm, new: int, long_prompt: str, static: bool):
    """Rows of the product's loop: decode with records on and off, then TTFT. The clock starts at the
    first update (the prefill and first token done), so the rate is of decode steps only."""
    import nucleus

    os.environ["NUCLEUS_STATIC_CACHE"] = "on" if static else "off"
    name = "ours_static" if static else "ours_dynamic"
    settings = nucleus.SamplingSettings(max_new_tokens=new, seed=0, temperature=TEMPERATURE, top_p=TOP_P,
                                        repetition_penalty=1.0)
    for record in (10, 0):
        for _ in range(2):                                   # compile and record the graphs first
            list(lm.stream(PROMPT, settings.replace(max_new_tokens=8), record=record))
        first = last = None
        for update in lm.stream(PROMPT, settings, record=record):
            sync(lm.device)
            if not update.done:
                first = first or (time.perf_counter(), update.tokens)
                last = (time.perf_counter(), update.tokens)
        steps, dt = last[1] - first[1], last[0] - first[0]
        yield {"case": name, "records": record, "batch": 1, "new_tokens": last[1], "tok_per_s": round(steps / dt, 1),
               "ms_per_step": round(dt / steps * 1000, 3)}
    t = time.perf_counter()
    next(iter(lm.stream(long_prompt, settings.replace(max_new_tokens=1))))
    yield {"case": name, "prompt_tokens": len(lm.tokenizer(long_prompt).input_ids),
           "ttft_ms": round((time.perf_counter() - t) * 1000, 2)}


# ---- all cases ------------------------------------------------------------------------------------
def measure(device: torch.device, smoke: bool, emit, budget_s: float = 150.0,
            tokenizer_dir: str | None = None) -> list[dict]:
    """All rows; a failing case is a row with `error`, the others still run."""
    size = "tiny" if smoke else "nucleus-1b"
    new_eager, new_fast, long_len = (4, 6, 24) if smoke else (64, 256, 512)
    start, rows = time.perf_counter(), []

    def row(r):
        rows.append(r)
        emit({"part": "serve", **r})

    model = build(size, device)
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(3, 32000, (b, 16), generator=g).to(device) for b in ((1, 2) if smoke else (1, 16))}
    long = torch.randint(3, 32000, (1, long_len), generator=g).to(device)
    long_prompt = " ".join(["bees make honey"] * (long_len // 3))
    lm = local_model(model, tokenizer_dir, device)
    cases = [
        ("hf_eager", lambda: [hf_row("hf_eager", model, p, new_eager, device) for p in prompts.values()]
         + [hf_ttft(model, long, device)]),
        ("ours_static", lambda: ours_rows(lm, new_fast, long_prompt, static=True)),
        ("ours_dynamic", lambda: ours_rows(lm, new_eager if not smoke else new_fast, long_prompt, static=False)),
        ("hf_static", lambda: [hf_row("hf_static", model, prompts[1], new_fast, device, static=True, warm=2)]),
    ]                                     # hf_static last: ../shared/baselines measured it (524 tok/s, H200)
    before = os.environ.get("NUCLEUS_STATIC_CACHE")
    try:
        for name, run in cases:
            if time.perf_counter() - start > budget_s:
                row({"case": name, "skipped": f"serving budget of {budget_s:.0f} s spent"})
                continue
            try:
                for r in run():
                    row({**r, "weight_gb": round(weight_gb, 3)})
            except Exception as e:            # one broken path must not cost the other measurements
                row({"case": name, "error": f"{type(e).__name__}: {str(e)[:400]}"})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        os.environ.pop("NUCLEUS_STATIC_CACHE", None) if before is None else os.environ.update(
            NUCLEUS_STATIC_CACHE=before)
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: mistral-common's)")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    rows = measure(device, args.cpu_smoke or device.type == "cpu", lambda r: print(json.dumps(r), flush=True),
                   tokenizer_dir=args.tokenizer)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "serve_gpu.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
