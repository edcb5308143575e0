"""GPU serving at batch 1 and 16: plain `generate` against a static-cache, compiled decode loop.

    PYTHONPATH=. python bench/serve_gpu.py --out /tmp/serve          # one GPU, the 1.13B shape (bf16)
    PYTHONPATH=. python bench/serve_gpu.py --cpu-smoke --out /tmp/s  # no GPU: tiny model, a few tokens

Three paths on the same random-weight model (throughput does not depend on the values):
  hf_eager          `model.generate`, dynamic cache (what the Space does today)
  ours              a static KV cache and ONE compiled decode step (forward + the same
                    TemperatureLogitsWarper / TopPLogitsWarper that `generate` applies + sampling),
                    `torch.compile(mode="reduce-overhead", fullgraph=True)`, i.e. one CUDA graph per
                    token; no host sync until the last token
  hf_static         `model.generate(cache_implementation="static")`: transformers compiles the forward
                    itself on CUDA (its `compile_config`); batch 1 only, to keep the run short
  space_static      the Space's own path (nucleus.generate: worker thread, streamer, stop criteria) with
  space_dynamic     NUCLEUS_STATIC_CACHE on (what a GPU Space runs) and off (what it ran before);
                    only when a tokenizer folder is given (the suite passes one)
Each reports tokens/s and ms per step for N new tokens after a 16-token prompt, and time to first
token (TTFT) for a 512-token prompt. Sampling: temperature 0.8, top-p 0.9 (as ../shared/baselines).
Called by bench/gpu_suite.py; prints one JSON line per row.
"""
from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import os
import time
from pathlib import Path

import torch
from transformers import StaticCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from nucleus import architecture

TEMPERATURE, TOP_P = 0.8, 0.9


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
    return model.generate(prompt, **kw)


# ---- ours: static cache + one compiled decode step -------------------------------------------------
def chunked_cumsum(x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """cumsum over the last dimension as two short scans: within chunks of `chunk`, then over the
    chunks' totals. Inductor 2.11 splits one 32,000-long scan and fails to generate it for batch 16
    (H200: "Error in codegen for ComputedBuffer ... SplitScan"); scans of 128 and 250 should not need
    splitting (not yet run on a GPU)."""
    pad = (-x.shape[-1]) % chunk
    if pad:
        x = torch.nn.functional.pad(x, (pad, 0))           # leading zeros leave a cumsum unchanged
    c = x.reshape(*x.shape[:-1], -1, chunk).cumsum(-1)
    totals = c[..., -1]
    out = c + (totals.cumsum(-1) - totals).unsqueeze(-1)   # plus the sum of the chunks before
    return out.reshape(*x.shape[:-1], -1)[..., pad:]


class ChunkedTopP(TopPLogitsWarper):
    """TopPLogitsWarper with its cumulative sum taken by chunked_cumsum (batch > 1 only)."""

    def __call__(self, input_ids, scores):
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        remove = chunked_cumsum(sorted_logits.softmax(dim=-1)) <= (1 - self.top_p)
        remove[..., -self.min_tokens_to_keep:] = 0
        return scores.masked_fill(remove.scatter(1, sorted_indices, remove), self.filter_value)


class Decoder:
    """A static KV cache for (batch, max_len) and a compiled step: token (B, 1) -> next token (B, 1).
    The cache is built as full attention: the model's sliding window (4096) is longer than any
    sequence here, so the mask is the same, and the full layer keeps its length as a tensor (the
    sliding layer's Python int would be a new constant, hence a recompile, at every token)."""

    def __init__(self, model, batch: int, max_len: int, compile_kw: dict | None):
        self.model, self.device = model, next(model.parameters()).device
        cfg = copy.deepcopy(model.config)
        cfg.sliding_window = None
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
        self.cache = StaticCache(config=cfg, max_cache_len=max_len)
        # transformers 5.17 (the GPU image) names the argument past_key_values; 5.24 renamed it cache
        params = inspect.signature(model.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        top_p = TopPLogitsWarper if batch == 1 else ChunkedTopP   # batch 1 compiled and ran at 1,145 tok/s as is
        self.warpers = [TemperatureLogitsWarper(TEMPERATURE), top_p(TOP_P)]
        self.step = torch.compile(self._step, **compile_kw) if compile_kw is not None else self._step

    def _logits(self, ids, positions):                      # (B, T) -> (B, vocab) of the last position
        out = self.model(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1,
                         **{self.cache_kw: self.cache})
        return out.logits[:, -1, :].float()

    def _sample(self, ids, logits):
        for w in self.warpers:                              # the same processors generate() applies
            logits = w(ids, logits)
        probs = torch.softmax(logits, dim=-1)
        # multinomial without a host sync: argmax(p / Exp(1)) draws from p (exponential race)
        return torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1, keepdim=True)   # (B, 1)

    def _step(self, token, positions):
        return self._sample(token, self._logits(token, positions))

    @torch.no_grad()
    def prefill(self, prompt):
        self.cache.reset()
        positions = torch.arange(prompt.shape[1], device=self.device).unsqueeze(0).expand(prompt.shape[0], -1)
        return self._sample(prompt, self._logits(prompt, positions))

    @torch.no_grad()
    def generate(self, prompt, new: int):
        token = self.prefill(prompt)
        out = [token]
        pos = torch.full((prompt.shape[0], 1), prompt.shape[1], device=self.device, dtype=torch.long)
        for _ in range(new - 1):
            token = self.step(token, pos).clone()          # clone: a CUDA graph reuses its output buffer
            pos += 1
            out.append(token)
        return torch.cat([prompt, *out], dim=1)


# ---- measurements ---------------------------------------------------------------------------------
def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def decode_row(name, gen, prompt, new, device, warm: int = 1) -> dict:
    for _ in range(warm):
        gen(prompt, new)
    out, dt = timed(lambda: gen(prompt, new), device)
    produced = out.shape[1] - prompt.shape[1]
    return {"case": name, "batch": prompt.shape[0], "new_tokens": produced,
            "tok_per_s": round(produced * prompt.shape[0] / dt, 1), "ms_per_step": round(dt / produced * 1000, 3)}


def ttft_row(name, first, prompt, device, warm: int = 1) -> dict:
    for _ in range(warm):
        first(prompt)
    _, dt = timed(lambda: first(prompt), device)
    return {"case": name, "prompt_tokens": prompt.shape[1], "ttft_ms": round(dt * 1000, 2)}


def space_rows(model, tokenizer_dir: str, device, new: int, static: bool) -> list[dict]:
    """The Space's own path: nucleus.generate (stream() in its worker thread, the app's processors,
    stop criteria and streamer) on this model, with NUCLEUS_STATIC_CACHE on or off."""
    import nucleus
    from nucleus.loading import LoadedModel
    from nucleus.tokenizer import load_tokenizer

    lm = LoadedModel(model, load_tokenizer(tokenizer_dir), "random", Path(tokenizer_dir), device,
                     next(model.parameters()).dtype, sum(p.numel() for p in model.parameters()))
    settings = nucleus.SamplingSettings(max_new_tokens=new, seed=0, temperature=TEMPERATURE, top_p=TOP_P,
                                        repetition_penalty=1.0)
    before = os.environ.get("NUCLEUS_STATIC_CACHE")
    os.environ["NUCLEUS_STATIC_CACHE"] = "on" if static else "off"
    try:
        for _ in range(2):                               # compile and record first
            nucleus.generate(lm, "### Lesson: Bees\n### Introduction\n", settings)
        out = nucleus.generate(lm, "### Recipe: Soup\n### Ingredients\n", settings)
    finally:
        if before is None:
            os.environ.pop("NUCLEUS_STATIC_CACHE")
        else:
            os.environ["NUCLEUS_STATIC_CACHE"] = before
    return [{"case": "space_static" if static else "space_dynamic", "batch": 1, "new_tokens": out.tokens,
             "tok_per_s": round(out.tokens_per_second, 1), "ms_per_step": round(out.seconds / out.tokens * 1000, 3),
             "finish_reason": out.finish_reason}]


def measure(device: torch.device, smoke: bool, emit, budget_s: float = 150.0,
            tokenizer_dir: str | None = None) -> list[dict]:
    """All rows; a failing case is a row with `error`, the others still run."""
    size = "tiny" if smoke else "nucleus-1b"
    new_eager, new_fast, long_prompt = (4, 6, 24) if smoke else (64, 256, 512)
    batches = (1, 2) if smoke else (1, 16)
    compile_kw = (dict(backend="eager", fullgraph=True) if smoke     # CPU: dynamo only (catches graph breaks)
                  else dict(mode="reduce-overhead", fullgraph=True, dynamic=False))
    start, rows = time.perf_counter(), []

    def row(r):
        rows.append(r)
        emit({"part": "serve", **r})

    model = build(size, device)
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(3, 32000, (b, 16), generator=g).to(device) for b in batches}
    long = torch.randint(3, 32000, (1, long_prompt), generator=g).to(device)
    cases = [
        ("hf_eager", lambda: [decode_row("hf_eager", lambda p, n: hf_generate(model, p, n), prompts[b], new_eager,
                                         device) for b in batches]
         + [ttft_row("hf_eager", lambda p: hf_generate(model, p, 1), long, device)]),
        ("ours", lambda: ours_rows(model, prompts, long, new_fast, compile_kw, device)),
        ("hf_static", lambda: [decode_row("hf_static", lambda p, n: hf_generate(model, p, n, static=True),
                                          prompts[1], new_fast, device, warm=2)]),
    ]                                     # hf_static last: ../shared/baselines measured it (524 tok/s, H200)
    if tokenizer_dir:                     # the Space's path, as it runs on a GPU and as it ran before
        cases += [("space_static", lambda: space_rows(model, tokenizer_dir, device, new_fast, True)),
                  ("space_dynamic", lambda: space_rows(model, tokenizer_dir, device, new_fast, False))]
    for name, run in cases:
        if time.perf_counter() - start > budget_s:
            row({"case": name, "skipped": f"serving budget of {budget_s:.0f} s spent"})
            continue
        try:
            for r in run():
                row({**r, "weight_gb": round(weight_gb, 3)})
        except Exception as e:            # one broken path must not cost the other measurements
            row({"case": name, "error": f"{type(e).__name__}: {str(e)[:400]}"})
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def ours_rows(model, prompts, long, new, compile_kw, device):
    """One row per batch size, yielded as measured (a later failure keeps the earlier rows). Each
    batch size compiles afresh with static shapes: reusing the graph would make dynamo recompile
    with a symbolic batch, and inductor 2.11 fails to generate top-p's cumsum for that (seen on an
    H200: "Error in codegen for ComputedBuffer ... SplitScan")."""
    dec = Decoder(model, 1, long.shape[1] + 1, None)        # TTFT: the prefill is one eager forward
    yield ttft_row("ours", dec.prefill, long, device)
    for b, prompt in prompts.items():
        torch._dynamo.reset()
        dec = Decoder(model, b, prompt.shape[1] + new, compile_kw)
        yield decode_row("ours", dec.generate, prompt, new, device, warm=2)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--cpu-smoke", action="store_true")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    rows = measure(device, args.cpu_smoke or device.type == "cpu", lambda r: print(json.dumps(r), flush=True))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "serve_gpu.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
