"""Serving speed on CPU: plain Hugging Face `generate`, Nucleus int8 and int4, and llama.cpp.

    python bench/serve_speed.py                       # random-weight 1.13B Nucleus + bundled nano
    python bench/serve_speed.py --models 1b --llama-cpp-dir path/to/llama.cpp --work runs/serve-speed

For each model it measures, for every path, batch-1 decode tokens/s (sampling at temperature 0.8,
top-p 0.9 from a 16-token prompt), the time to first token of a 512-token prompt (prefill), and
the peak resident memory of the process, then prints the ratios. Each (model, path) runs in its
own child process so that peak memory and caches of one do not leak into the other; all in one
run on one machine, with the same number of threads.

Paths:
- baseline: `MistralForCausalLM` in bf16 and `model.generate` (a Space without this project);
- nucleus-int8, nucleus-int4: `nucleus.load(quantize=...)` and `nucleus.generate`, as the Space
  serves (auto picks one of them on CPU, see nucleus/quantize.py);
- llama.cpp-q8_0, llama.cpp-q4_0: when `llama-cpp-python` is installed and `--llama-cpp-dir`
  names a llama.cpp source tree: the checkpoint converted by llama.cpp's own
  `convert_hf_to_gguf.py` (Q8_0 directly; Q4_0 quantised from its F16 file by llama.cpp's
  quantiser), run through llama-cpp-python with the same thread count.
The quality gate (nucleus/quality.py) of int8 and int4 against bf16 is printed for each model; it
means something only for trained weights (the nano), not for the random 1.13B.
No Hub needed: the 1.13B model has random weights (speed does not depend on them).
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


def measure_llama_cpp(path: str, gguf: str, folder: str, new_tokens: int, ctx_tokens: int) -> dict:
    """Runs in the child process: the same three figures through llama-cpp-python."""
    from llama_cpp import Llama

    from nucleus.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=ctx_tokens + 64,
                n_batch=ctx_tokens, seed=0, verbose=False)
    load_s = time.perf_counter() - t0

    def run(ids, n):
        llm.reset()                                   # no prefix reuse between runs
        got = 0
        for _ in llm.generate(ids[0].tolist(), temp=SAMPLING["temperature"], top_p=SAMPLING["top_p"],
                              top_k=0, min_p=0.0, repeat_penalty=1.0, reset=True):
            got += 1
            if got == n:                              # a count, not EOS: random weights may emit it
                break
        return got
    run(prompt_ids(tok, 8), 2)
    t = time.perf_counter()
    n = run(prompt_ids(tok, 16), new_tokens)
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    run(prompt_ids(tok, ctx_tokens), 1)
    ttft = time.perf_counter() - t
    llm.close()
    return {"path": path, "weights": Path(gguf).stem.rsplit("-", 1)[-1], "new_tokens": n,
            "tok_per_s": round(n / decode_s, 2), "ttft_s": round(ttft, 2), "load_s": round(load_s, 1),
            "peak_rss_gb": round(peak_rss() / 1e9, 2), "threads": threads}


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
        lm = nucleus.load(folder, device="cpu", quantize=path.removeprefix("nucleus-"))
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


def gate(folder: str) -> dict:
    """The quality gate (nucleus/quality.py) of int8 and int4 against plain transformers in bf16."""
    import nucleus
    from nucleus import quality
    from nucleus.tokenizer import load_tokenizer
    from transformers import MistralForCausalLM

    ref = MistralForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    tok = load_tokenizer(folder)
    out = {"path": "quality"}
    for mode in ("int8", "int4"):
        quant = nucleus.load(folder, device="cpu", quantize=mode).model
        out[mode] = quality.compare(ref, quant, tok).as_dict()
        del quant
    return out


def gguf_check(folder: str, work: str, new_tokens: int = 32) -> dict:
    """Runs in the child: Nucleus's own GGUF export (train/export.py --gguf f16) read by llama.cpp.
    Checks that llama.cpp splits text into the same ids as the Nucleus tokenizer, and that its
    greedy continuation equals plain transformers' (fp32, no repetition penalty) for new_tokens."""
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from nucleus import presets, quality
    from nucleus.tokenizer import load_tokenizer
    from train import export

    out = export.main(["--checkpoint", folder, "--out", str(Path(work) / f"{Path(folder).name}-nucleus-f16.gguf"),
                       "--gguf", "f16", "--overwrite"])           # the bench's own file, remade each run
    tok = load_tokenizer(folder)
    llm = Llama(model_path=str(out), n_threads=torch.get_num_threads(), n_ctx=1024, verbose=False)
    prompts = [pr.prompt for pr in presets.load_presets().values()]
    texts = list(quality.HELD_OUT) + prompts
    same_ids = sum(llm.tokenize(t.encode(), add_bos=True) == [tok.bos_token_id] + tok.encode(t, add_special_tokens=False)
                   for t in texts)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    greedy_equal = 0
    for prompt in prompts:
        ids = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
        llm.reset()
        got = []
        for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(t)
            if len(got) == new_tokens:
                break
        with torch.inference_mode():
            want = ref.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                do_sample=False, repetition_penalty=1.0, pad_token_id=tok.eos_token_id)
        greedy_equal += got == want[0, len(ids):].tolist()
    llm.close()
    return {"path": "gguf", "file": str(out), "tokenization_equal": f"{same_ids}/{len(texts)}",
            "greedy_equal": f"{greedy_equal}/{len(prompts)}", "new_tokens": new_tokens}


def gguf_files(folder: Path, work: Path, llama_dir: Path) -> dict[str, Path]:
    """Q8_0 and Q4_0 GGUF files of `folder`, made once with llama.cpp's own tools and kept in `work`."""
    import llama_cpp

    convert = llama_dir / "convert_hf_to_gguf.py"
    if not convert.is_file():
        raise SystemExit(f"--llama-cpp-dir: no convert_hf_to_gguf.py in {llama_dir}")
    out = {}
    for kind in ("f16", "q8_0"):
        dest = work / f"{folder.name}-{kind}.gguf"
        if not dest.is_file():
            print(f"converting {folder.name} to {kind} with llama.cpp's converter ...", file=sys.stderr, flush=True)
            done = subprocess.run([sys.executable, str(convert), str(folder), "--outtype", kind,
                                   "--outfile", str(dest) + ".part"], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"llama.cpp's converter failed:\n{done.stderr[-3000:]}")
            os.replace(str(dest) + ".part", dest)
        out[kind] = dest
    q4 = work / f"{folder.name}-q4_0.gguf"
    if not q4.is_file():
        print("quantising to q4_0 with llama.cpp's quantiser ...", file=sys.stderr, flush=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.nthread = torch.get_num_threads()
        if llama_cpp.llama_model_quantize(str(out["f16"]).encode(), (str(q4) + ".part").encode(), params) != 0:
            raise SystemExit("llama.cpp's quantiser failed")
        os.replace(str(q4) + ".part", q4)
    out["q4_0"] = q4
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu"],
                   help="cpu (the GPU comparison needs a GPU machine; see README)")
    p.add_argument("--models", default="1b,nano", help="comma list of: 1b (random weights), nano (bundled)")
    p.add_argument("--paths", default="baseline,nucleus-int8,nucleus-int4,llama.cpp-q8_0,llama.cpp-q4_0,quality,gguf",
                   help="comma list of the paths to run (default: all; llama.cpp-* need --llama-cpp-dir; gguf, "
                        "Nucleus's own F16 GGUF export run in llama.cpp, needs llama-cpp-python)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=512, help="prompt length for time to first token")
    p.add_argument("--work", default=None, help="where to keep the random 1.13B checkpoint and GGUF files "
                                                "(default: a temp dir)")
    p.add_argument("--llama-cpp-dir", type=Path, default=os.environ.get("LLAMA_CPP_DIR"),
                   help="a llama.cpp source tree (for convert_hf_to_gguf.py; default: LLAMA_CPP_DIR)")
    p.add_argument("--child", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> dict:
    """One (path, model) measurement, in the child process the parent started for it."""
    path, folder, *rest = args.child
    if path == "quality":
        return gate(folder)
    if path == "gguf":
        return gguf_check(folder, rest[0])
    if path.startswith("llama.cpp"):
        return measure_llama_cpp(path, rest[0], folder, args.new_tokens, args.prompt_tokens)
    return measure(path, folder, args.new_tokens, args.prompt_tokens)


def runnable_paths(paths: list[str], llama_cpp_dir) -> list[str]:
    """`paths` without the llama.cpp ones when llama-cpp-python is missing (said on stderr); those
    converted by llama.cpp's own script also need its source tree."""
    llama = [q for q in paths if q.startswith("llama.cpp") or q == "gguf"]
    if not llama:
        return paths
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: skipping the llama.cpp paths (docs/benchmarks.md: CPU serving)",
              file=sys.stderr)
        return [q for q in paths if q not in llama]
    if llama_cpp_dir is None and any(q.startswith("llama.cpp") for q in paths):
        raise SystemExit("the llama.cpp paths need --llama-cpp-dir (or LLAMA_CPP_DIR): a llama.cpp "
                         "source tree, for its convert_hf_to_gguf.py")
    return paths


def run_child(args, name: str, path: str, folder: Path, extra: list[str]) -> dict:
    """Run one path on one model in a fresh process (its own peak memory and caches)."""
    out = subprocess.run([sys.executable, __file__, "--new-tokens", str(args.new_tokens), "--prompt-tokens",
                          str(args.prompt_tokens), "--child", path, str(folder), *extra],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise SystemExit(f"{name}/{path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(name: str, rows: dict[str, dict]) -> dict:
    """One model's ratios: every path against the baseline, int4 against llama.cpp's Q4_0, the gates."""
    summary = {"model": name, "load_average": os.getloadavg()}
    if "baseline" in rows:
        b = rows["baseline"]
        for path, r in rows.items():
            if path not in ("baseline", "quality"):
                summary[f"{path}_decode_vs_baseline"] = round(r["tok_per_s"] / b["tok_per_s"], 2)
    if "nucleus-int4" in rows and "llama.cpp-q4_0" in rows:
        o, l = rows["nucleus-int4"], rows["llama.cpp-q4_0"]
        summary["int4_decode_vs_llama.cpp_q4_0"] = round(o["tok_per_s"] / l["tok_per_s"], 2)
        summary["int4_prefill_speedup_vs_llama.cpp_q4_0"] = round(l["ttft_s"] / o["ttft_s"], 2)
    if "quality" in rows:
        summary.update({f"gate_{m}": rows["quality"][m]["passed"] for m in ("int8", "int4")})
    if "gguf" in rows:
        summary["gguf_greedy_equal"] = rows["gguf"]["greedy_equal"]
    return summary


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return []

    from nucleus.loading import BUNDLED_MODEL

    paths = runnable_paths(args.paths.split(","), args.llama_cpp_dir)
    work = Path(args.work or tempfile.mkdtemp(prefix="nucleus-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"threads": torch.get_num_threads(), "load_average": os.getloadavg()}), flush=True)
    results = []
    for name in args.models.split(","):
        folder = make_random_1b(work / "nucleus-1b-random") if name == "1b" else BUNDLED_MODEL
        ggufs = gguf_files(folder, work, args.llama_cpp_dir) if any(q.startswith("llama.cpp") for q in paths) else {}
        rows = {}
        for path in paths:
            extra = ([str(ggufs[path.split("-", 1)[1]])] if path.startswith("llama.cpp") else
                     [str(work)] if path == "gguf" else [])
            rows[path] = run_child(args, name, path, folder, extra)
            print(json.dumps({"model": name, **rows[path]}), flush=True)
        summary = summarize(name, rows)
        print(json.dumps(summary), flush=True)
        results += [{"model": name, **r} for r in rows.values()] + [summary]
    return results


if __name__ == "__main__":
    main()
