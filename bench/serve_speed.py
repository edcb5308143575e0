"""Serving speed: plain Hugging Face `generate` against the Nucleus serving path, side by side.

    python bench/serve_speed.py                       # CPU: random-weight 1.13B Nucleus + bundled nano
    python bench/serve_speed.py --models nano --new-tokens 64

For each model it measures, for both paths, batch-1 decode tokens/s (sampling at temperature 0.8,
top-p 0.9 from a 16-token prompt), time to first token for a 512-token prompt, and the peak
resident memory of the process, then prints the ratios. Each (model, path) runs in its own child
process so that peak memory and caches of one do not leak into the other; all in one run on
one machine. Baseline: `MistralForCausalLM` in bf16 and `model.generate` (what a Space would do
without this project). Ours: `nucleus.load(quantize="auto")` and `nucleus.stream`, as the Space
serves. No Hub needed: the 1.13B model has random weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLING = dict(temperature=0.8, top_p=0.9)


def make_random_1b(folder: Path) -> Path:
    """The Nucleus-1.13B architecture with random weights, saved once as bf16 safetensors."""
    if (folder / "model.safetensors.index.json").is_file() or (folder / "model.safetensors").is_file():
        return folder
    from nucleus import architecture
    from nucleus.tokenizer import load_tokenizer

    model = architecture.build("nucleus-1b", seed=0).to(torch.bfloat16)
    model.save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


def prompt_ids(tok, n: int) -> torch.Tensor:
    """(1, n) ids of English text (this repository's README, repeated): <s> + n-1 tokens."""
    text = (ROOT / "README.md").read_text()
    ids = tok.encode(text, add_special_tokens=False)
    ids = (ids * (n // len(ids) + 1))[: n - 1]
    return torch.tensor([[tok.bos_token_id] + ids])


def peak_rss() -> float:
    """Peak resident bytes of this process (VmHWM: unlike ru_maxrss, it is not inherited
    from the parent that started the child)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(path: str, folder: str, new_tokens: int, ctx_tokens: int) -> dict:
    """Runs in the child process."""
    import nucleus
    from transformers import AutoTokenizer, MistralForCausalLM

    torch.manual_seed(0)
    t0 = time.perf_counter()
    if path == "baseline":
        model = MistralForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        load_s = time.perf_counter() - t0

        def run(ids, n):
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=True,
                                     pad_token_id=tok.eos_token_id, **SAMPLING)
            return out.shape[1] - ids.shape[1]
        weights = "bfloat16"
    else:
        lm = nucleus.load(folder, device="cpu")
        load_s = time.perf_counter() - t0
        tok = lm.tokenizer

        def run(ids, n):
            text = tok.decode(ids[0, 1:])            # nucleus.stream takes text and encodes it again
            settings = nucleus.SamplingSettings(repetition_penalty=1.0, max_new_tokens=n, seed=0, **SAMPLING)
            return nucleus.generate(lm, text, settings).tokens
        model, weights = lm.model, lm.quantization if lm.quantization != "none" else str(lm.dtype)[6:]
    run(prompt_ids(tok, 8), 2)                                  # warm-up (allocator, kernels)
    t = time.perf_counter()
    n = run(prompt_ids(tok, 16), new_tokens)
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    run(prompt_ids(tok, min(ctx_tokens, model.config.max_position_embeddings - 2)), 1)
    ttft = time.perf_counter() - t
    return {"path": path, "weights": weights, "new_tokens": n, "tok_per_s": round(n / decode_s, 2),
            "ttft_s": round(ttft, 2), "load_s": round(load_s, 1),
            "peak_rss_gb": round(peak_rss() / 1e9, 2),
            "threads": torch.get_num_threads()}


def agreement(folder: str, prompts: int = 8, length: int = 64) -> dict:
    """Quality gate: top-1 next-token agreement of the int8 model with the unquantised bf16 model
    (what plain HF serves on CPU) on a fixed prompt set: 8 windows of this README."""
    import nucleus
    from transformers import MistralForCausalLM

    ref = MistralForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    quant = nucleus.load(folder, device="cpu", quantize="int8").model
    from nucleus.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    ids = prompt_ids(tok, prompts * length + 1)[:, 1:].reshape(prompts, length)
    with torch.inference_mode():
        a, b = ref(ids).logits.argmax(-1), quant(ids).logits.argmax(-1)
    return {"path": "quality", "top1_agreement_int8_vs_bf16": round((a == b).float().mean().item(), 4),
            "positions": a.numel()}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu"],
                   help="cpu (the GPU comparison needs a GPU machine; see README)")
    p.add_argument("--models", default="1b,nano", help="comma list of: 1b (random weights), nano (bundled)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for time to first token")
    p.add_argument("--work", default=None, help="where to keep the random 1.13B checkpoint (default: temp dir)")
    p.add_argument("--child", nargs=2, metavar=("PATH", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = (agreement(args.child[1]) if args.child[0] == "quality" else
                  measure(args.child[0], args.child[1], args.new_tokens, args.prompt_tokens))
        print(json.dumps(result))
        return []

    from nucleus.loading import BUNDLED_MODEL

    work = Path(args.work or tempfile.mkdtemp(prefix="nucleus-serve-"))
    results = []
    for name in args.models.split(","):
        folder = make_random_1b(work / "nucleus-1b-random") if name == "1b" else BUNDLED_MODEL
        rows = {}
        for path in ("baseline", "nucleus", "quality"):
            out = subprocess.run([sys.executable, __file__, "--child", path, str(folder), "--new-tokens",
                                  str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens)],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                raise SystemExit(f"{name}/{path} failed:\n{out.stderr[-3000:]}")
            rows[path] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"model": name, **rows[path]}), flush=True)
        b, o = rows["baseline"], rows["nucleus"]
        summary = {"model": name, "decode_speedup": round(o["tok_per_s"] / b["tok_per_s"], 2),
                   "top1_agreement_int8_vs_bf16": rows["quality"]["top1_agreement_int8_vs_bf16"],
                   "ttft_ratio": round(b["ttft_s"] / o["ttft_s"], 2),
                   "peak_rss_ratio": round(o["peak_rss_gb"] / b["peak_rss_gb"], 2)}
        print(json.dumps(summary), flush=True)
        results += [{"model": name, **b}, {"model": name, **o}, summary]
    return results


if __name__ == "__main__":
    main()
