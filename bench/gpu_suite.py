"""One GPU call that measures everything (issue 11): training A/B, GPU serving, a GPU-trained nano.

    python bench/gpu_suite.py --prepare-carry                 # here, once: writes .carry/ (see docs/benchmarks.md)
    PYTHONUNBUFFERED=1 PYTHONPATH=.:.carry/site python3 bench/gpu_suite.py --out $OUT      # on the GPU machine
    python bench/gpu_suite.py --cpu-smoke --out /tmp/suite    # every part, a step or two, tiny shapes

Parts, in the order of --parts (default nano,train,serve: the durable result first):
  nano   Nucleus-Nano, both stages, with the engine and train/configs/nano-*.yaml on the carried token
         cache (bf16 autocast, torch.compile, large micro-batches; steps set by a time budget measured
         in a short probe run, capped by --nano-max-epochs; stage 2 replays --nano-replay of stage-1
         text). Held-out perplexity of the new stage-1 and final models (and on the presets' passages
         of nucleus/quality.py) (bf16 weights as stored, fp32 compute, every full 512-token block of each
         stage's held-out split: the split and method of models/nucleus-nano/README.md), beside the
         committed models' figures on the same split (.carry/reference.json, measured at prepare
         time, or measured here when models/ travelled). The new final model comes back as
         nano-gpu.tar.part* (15 MiB pieces: the device returns at most 8 files of 16 MiB):
         `cat nano-gpu.tar.part* | tar x` gives nucleus-nano-gpu/ (loadable) and both stages' logs.
  train  1.13B shape, random tokens, same token stream: (a) plain Hugging Face (bench/train_speed.py:
         fp32 master, bf16 autocast, activation checkpointing, 4 x 2048, fused AdamW) against (b) the
         engine on rtx3090-pretrain.yaml with speed levers (compile, liger, larger micro-batch,
         no checkpointing). Tokens/s (median step), MFU against the datasheet peak and a matmul
         ceiling measured here, peak memory (goal <= 22 GiB), loss curves (goal: within 1% of a).
  serve  bench/serve_gpu.py: plain generate vs the product's decode loop (static cache + CUDA graphs), TTFT.
Every case is guarded: an error becomes a row with `error` and the suite goes on. Results are
rewritten to OUT/gpu_suite.json after every row, so a run stopped at its time limit keeps them.
--deadline-s (default 480) bounds the whole run: parts shrink their budgets to what is left.
On the GPU machine nothing is installed: PYTHONPATH puts the checkout (nucleus, train, bench) and
the carried packages (.carry/site: liger-kernel) on the path.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")          # one log line per step, no progress bars in the log
ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.gpu_carry import (CARRY, NANO_TOKENIZER, committed_reference, heldout_ppl,  # noqa: E402
                             passages_ppl, prepare_carry)
from nucleus import architecture  # noqa: E402
from train import blocks as B  # noqa: E402
from train import engine  # noqa: E402
from train.engine import Data, TrainConfig, flops_per_token, peak_flops, run  # noqa: E402
from train.records import NoRecords, RunRecords  # noqa: E402

# the engine's progress bar passes `disable` itself, so TQDM_DISABLE does not reach it: the device
# reply carries the last 12,000 characters, which should be log lines, not redrawn bars
_tqdm = engine.tqdm
engine.tqdm = lambda *a, **k: _tqdm(*a, **{**k, "disable": True})

PART_BYTES = 15 * 2**20                               # < 16 MiB per returned file


def tokenizer_dir() -> str:
    """Tokenizer files for scratch runs: the GPU image has no mistral-common to build them from.
    .carry/tokenizer travels when models/ does not (see docs/benchmarks.md, GPU suite)."""
    return str(CARRY / "tokenizer" if (CARRY / "tokenizer" / "tokenizer.json").is_file() else NANO_TOKENIZER)


class Capture(NoRecords):
    """NoRecords that keeps the engine's log rows (with log_every=1: one row per optimizer step)."""

    def __init__(self):
        self.rows = []

    def row(self, **values):
        self.rows.append(values)


class Suite:
    def __init__(self, out: Path, smoke: bool, deadline_s: float):
        self.out, self.smoke, self.start, self.deadline = out, smoke, time.perf_counter(), deadline_s
        self.device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
        import transformers
        self.results = {"device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu (smoke)",
                        "torch": torch.__version__, "transformers": transformers.__version__, "smoke": smoke,
                        "rows": []}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.start)

    def emit(self, row: dict) -> None:
        row = {**row, "t_s": round(time.perf_counter() - self.start, 1)}
        self.results["rows"].append(row)
        print(json.dumps(row, default=str), flush=True)
        (self.out / "gpu_suite.json").write_text(json.dumps(self.results, indent=1, default=str))

    def clean(self) -> None:
        """Between cases: compiled graphs, accelerate's per-process precision, cached GPU memory."""
        from accelerate.state import AcceleratorState
        torch._dynamo.reset()
        AcceleratorState._reset_state()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def median_tokens_per_second(step_seconds: list[float], step_tokens: int, skip: int) -> float:
    """Steady state: the median step after `skip` warm-up steps (compilation, allocator)."""
    timed = step_seconds[skip:] or step_seconds[-1:]
    return step_tokens / statistics.median(timed)


# ---- part: training throughput A/B -----------------------------------------------------------------
# the cases switch levers on over the plain recipe (a's), not over the config's own choice of them
# (and a's micro-batch 4 x 2048 on the GPU; the CPU smoke keeps its tiny shape)
PLAIN_LEVERS = dict(compile=False, liger=False, activation_checkpointing=True)


def carry_site_hint(search_path: list[str] | None = None) -> str:
    """Why liger may be missing although it was carried: .carry/site is on the path only through
    PYTHONPATH (the device command), so a run without it would quietly skip the liger cases.
    search_path: the import path to look in (default sys.path, read, never changed)."""
    site = (CARRY / "site").resolve()
    if not site.is_dir() or any(Path(p or ".").resolve() == site for p in (search_path or sys.path)):
        return ""
    return " (.carry/site is here but not on the path: run with PYTHONPATH=.:.carry/site)"


def train_cases(smoke: bool, only: list[str] | None = None) -> list[tuple[str, dict]]:
    """(name, overrides of rtx3090-pretrain.yaml) in order of expected value; liger/8-bit cases only
    where their package imports, as-is only on a GPU; `only` keeps the named ones (--train-cases) and
    refuses a name that is unknown or not available here, saying which."""
    def importable(name):
        try:
            __import__(name)
            return True
        except Exception:                  # liger without triton (CPU torch) raises ImportError
            return False

    comp = {} if smoke else {"compile": True}     # CPU smoke: inductor would need minutes; the path is the same
    no_ckpt = {"activation_checkpointing": False}
    liger = importable("liger_kernel.transformers")
    # (name, overrides, why it is not available here or None); without checkpointing nothing is
    # recomputed, but activations grow with the micro-batch: smaller ones keep it under 22 GiB
    no_liger = None if liger else "needs liger-kernel with triton on CUDA" + carry_site_hint()
    every = [("b_compile", comp, None),
             ("b_compile_liger", {**comp, "liger": True}, no_liger),
             ("b_compile_liger_no_ckpt_mb2", {**comp, "liger": True, **no_ckpt, "micro_batch": 2}, no_liger),
             ("b_compile_liger_no_ckpt_mb1", {**comp, "liger": True, **no_ckpt, "micro_batch": 1}, no_liger),
             ("b_liger_no_ckpt_mb2", {"liger": True, **no_ckpt, "micro_batch": 2}, no_liger),
             ("b_compile_liger_no_ckpt", {**comp, "liger": True, **no_ckpt}, no_liger),
             ("b_compile_liger_mb8", {**comp, "liger": True, "micro_batch": 8}, no_liger),
             ("b_compile_no_ckpt_mb2", {**comp, **no_ckpt, "micro_batch": 2}, None),
             ("b_compile_no_ckpt", {**comp, **no_ckpt}, None),
             # on CPU it would repeat b_compile (compile and liger are off there)
             ("b_3090_as_is", {}, "runs on a GPU only" if smoke else None),
             ("b_compile_adamw8bit", {**comp, "optimizer": "adamw8bit"},
              None if importable("bitsandbytes") else "needs bitsandbytes")]
    if only:
        known = {name: why for name, _, why in every}
        bad = [f"{n} ({known[n]})" if n in known else f"{n} (unknown)" for n in only if known.get(n, "?")]
        if bad:
            raise ValueError(f"train cases not available: {', '.join(bad)}; known: {', '.join(known)}")
    return [(name, o) for name, o, why in every if why is None and (not only or name in only)]


def part_train(s: Suite, budget_s: float, steps: int, only: list[str] | None = None) -> None:
    from bench.train_speed import baseline, matmul_ceiling

    shape = (dict(size="tiny", seq_len=32, micro_batch=2, tokens_per_step=128, precision="fp32") if s.smoke
             else dict(tokens_per_step=2 * 4 * 2048))   # 2 micro-batches per step: accumulation is exercised
    base = dict(max_steps=steps, warmup_steps=2, log_every=1, tokenizer=tokenizer_dir(), **shape)
    cfg = TrainConfig.load(ROOT / "train/configs/rtx3090-pretrain.yaml", **base)
    ceiling = matmul_ceiling(s.device)
    peak = peak_flops(cfg, s.device)
    n_params = architecture.count_params(architecture.config(cfg.size))
    fpt = flops_per_token(architecture.config(cfg.size), n_params, cfg.seq_len)
    s.emit({"part": "train", "case": "setup", "size": cfg.size, "seq_len": cfg.seq_len, "steps": steps,
            "tokens_per_step": cfg.tokens_per_step, "matmul_ceiling_tflops": round(ceiling / 1e12, 2),
            "peak_tflops": peak / 1e12 if peak else None, "flops_per_token": fpt})
    skip = 1 if s.smoke else 2

    def figures(tps, mem):
        return {"tokens_per_second": round(tps, 1), "mfu_vs_peak": round(fpt * tps / peak, 4) if peak else None,
                "mfu_vs_ceiling": round(fpt * tps / ceiling, 4),
                "peak_mem_gib": None if mem is None else round(mem, 2),
                "fits_22gib": None if mem is None else mem <= 22.0}

    start = time.perf_counter()
    try:
        a = baseline(cfg, steps, s.device)
        a_tps = median_tokens_per_second(a["step_seconds"], a["step_tokens"], skip)
        s.emit({"part": "train", "case": "a_plain_hf", **figures(a_tps, a["peak_mem_gib"]),
                "losses": [round(x, 5) for x in a["losses"]]})
    except Exception as e:
        s.emit({"part": "train", "case": "a_plain_hf", "error": f"{type(e).__name__}: {str(e)[:400]}"})
        a, a_tps = None, None
    s.clean()
    plain = {**PLAIN_LEVERS, **({} if s.smoke else {"micro_batch": 4})}
    for name, overrides in train_cases(s.smoke, only):
        spent = time.perf_counter() - start
        if spent > budget_s or s.left() < 45:
            s.emit({"part": "train", "case": name, "skipped": f"budget spent ({spent:.0f} s)"})
            continue
        try:
            levers = {} if name == "b_3090_as_is" else {**plain, **overrides}
            c = TrainConfig.load(ROOT / "train/configs/rtx3090-pretrain.yaml", **{**base, **levers})
            cap = Capture()
            r = run(c, Data(B.RandomBlocks(2**20, c.seq_len, architecture.VOCAB_SIZE, c.seed), None, {}), cap)
            step_s = [r["step_tokens"] / float(row["tok_per_s"]) for row in cap.rows]
            tps = median_tokens_per_second(step_s, r["step_tokens"], skip)
            row = {"part": "train", "case": name, "overrides": overrides, **figures(tps, r["peak_mem_gib"]),
                   "first_step_s": round(step_s[0], 2), "losses": [round(x, 5) for x in r["losses"]]}
            if a is not None:
                row["ratio_vs_a"] = round(tps / a_tps, 3)
                diffs = [abs(x - y) / abs(y) for x, y in zip(r["losses"], a["losses"])]
                row["loss_max_rel_diff_vs_a"] = round(max(diffs), 5)
            s.emit(row)
        except Exception as e:
            s.emit({"part": "train", "case": name, "overrides": overrides,
                    "error": f"{type(e).__name__}: {str(e)[:400]}"})
        s.clean()


# ---- part: serving ------------------------------------------------------------------------------------
def part_serve(s: Suite, budget_s: float) -> None:
    from bench import serve_gpu

    serve_gpu.measure(s.device, s.smoke, s.emit, budget_s=min(budget_s, max(s.left() - 45, 0)),
                      tokenizer_dir=tokenizer_dir())
    s.clean()


# ---- part: Nucleus-Nano -------------------------------------------------------------------------------
def smoke_tokens(folder: Path, seq_len: int) -> Path:
    """A token cache in train/data.py's format, of random ids: the smoke needs no corpus."""
    rng = np.random.default_rng(0)
    for stage in ("stage1", "stage2"):
        f = folder / stage
        f.mkdir(parents=True, exist_ok=True)
        rng.integers(3, 32000, 12 * seq_len, dtype=np.uint16).tofile(f / "train.bin")
        rng.integers(3, 32000, 2 * seq_len, dtype=np.uint16).tofile(f / "val.bin")
        (f / "meta.json").write_text(json.dumps({"source": f"random ({stage})", "documents": 1, "tokens": 12 * seq_len,
                                                 "val_documents": 1, "val_tokens": 2 * seq_len}))
    return folder


def nano_stage(s: Suite, stage: str, yaml: str, tokens: Path, work: Path, budget_s: float, init: str | None,
               max_epochs: float) -> Path:
    """Probe the step time, then train the stage for what `budget_s` allows; returns its export folder."""
    gpu = not s.smoke
    shape = (dict(micro_batch=64, tokens_per_step=65_536, precision="bf16", compile=True) if gpu
             else dict(size="tiny", seq_len=64, micro_batch=2, tokens_per_step=256, precision="fp32", sample_tokens=4))
    common = dict(tokenizer=tokenizer_dir(), overwrite=True, dataset=str(tokens / stage),
                  **({"init": init} if init else {}), **shape)
    cfg0 = TrainConfig.load(ROOT / "train/configs" / yaml, **common)
    train = B.PackedBlocks.from_cache(tokens / stage, "train", cfg0.seq_len)
    val = B.PackedBlocks.from_cache(tokens / stage, "val", cfg0.seq_len)
    meta = json.loads((tokens / stage / "meta.json").read_text())

    probe_steps = 8 if gpu else 2
    probe = TrainConfig.load(ROOT / "train/configs" / yaml, **{**common, "max_steps": probe_steps, "log_every": 1,
                                                               "output_dir": str(work / f"{stage}-probe")})
    cap, t = Capture(), time.perf_counter()
    r = run(probe, Data(train, None, meta), cap)
    probe_s = time.perf_counter() - t
    step_s = statistics.median([r["step_tokens"] / float(row["tok_per_s"]) for row in cap.rows[1:] or cap.rows])
    s.clean()

    accum = r["step_tokens"] // (cfg0.micro_batch * cfg0.seq_len)
    per_epoch_steps = max(1, (len(train) // cfg0.micro_batch) // accum)
    by_time = int(budget_s * 0.85 / step_s)           # 15% for evaluations, samples, the export
    by_epochs = math.ceil(max_epochs * per_epoch_steps)
    steps = 2 if s.smoke else max(20, min(by_time, by_epochs))
    cfg = TrainConfig.load(ROOT / "train/configs" / yaml, **{
        **common, "max_steps": steps, "warmup_steps": max(1, steps // 20), "log_every": max(1, steps // 20),
        "eval_every": steps if s.smoke else max(1, steps // 4), "save_every": steps,
        "eval_batches": math.ceil(len(val) / cfg0.micro_batch) if len(val) else 1,   # the whole held-out split
        "output_dir": str(work / stage), "stage": "pretrain" if stage == "stage1" else "finetune"})
    t = time.perf_counter()
    summary = run(cfg, Data(train, val if len(val) else None, meta), RunRecords(cfg, True))
    s.emit({"part": "nano", "case": stage, "steps": steps, "tokens_per_step": summary["step_tokens"],
            "tokens_seen": summary["tokens_seen"], "epochs": round(steps / per_epoch_steps, 2),
            "seconds": round(time.perf_counter() - t, 1), "probe_s": round(probe_s, 1),
            "tokens_per_second": round(summary.get("steady_tokens_per_second", summary["tokens_per_second"]), 1),
            "mfu": summary.get("mfu"), "val_loss_logged": summary["val_loss"], "peak_mem_gib": summary["peak_mem_gib"],
            "limited_by": "time" if by_time < by_epochs else "epochs",
            "loss_every_tenth": [round(x, 4) for x in summary["losses"][::max(1, steps // 10)]]})
    s.clean()
    return Path(summary["export"])


def replay_cache(tokens: Path, out: Path, seq_len: int, share: float) -> Path:
    """A stage-2 token cache whose training stream also holds stage-1 blocks (`share` of stage 2's
    tokens, every k-th block of stage 1's training split, kept in order): without them the first
    GPU fine-tune (16 epochs of manuals) forgot stage 1's prose (docs/benchmarks.md, GPU suite). The held-out
    split stays stage 2's, so the card's figure is unchanged in meaning."""
    s1 = np.fromfile(tokens / "stage1" / "train.bin", dtype=np.uint16)
    s2 = np.fromfile(tokens / "stage2" / "train.bin", dtype=np.uint16)
    blocks = s1[: len(s1) // seq_len * seq_len].reshape(-1, seq_len)
    want = min(len(blocks), max(1, round(share * len(s2) / seq_len)))
    picked = blocks[np.linspace(0, len(blocks) - 1, want).round().astype(int)]
    folder = out / "stage2"
    folder.mkdir(parents=True, exist_ok=True)
    np.concatenate([s2[: len(s2) // seq_len * seq_len], picked.reshape(-1)]).tofile(folder / "train.bin")
    shutil.copy(tokens / "stage2" / "val.bin", folder / "val.bin")
    meta = json.loads((tokens / "stage2" / "meta.json").read_text())
    meta.update(tokens=int(len(s2) // seq_len * seq_len + picked.size),
                replay=f"{picked.size:,} stage-1 tokens ({len(picked)} blocks of {seq_len}) added to stage 2's "
                       f"{len(s2):,}")
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


def part_nano(s: Suite, tokens: Path | None, budget_s: float, max_epochs: float, replay: float = 0.0) -> None:
    from train import export as E

    work = Path(tempfile.mkdtemp(prefix="nucleus-nano-"))
    seq_len = 64 if s.smoke else 512
    if s.smoke:
        tokens = smoke_tokens(work / "tokens", seq_len)
    if tokens is None or not (tokens / "stage1" / "train.bin").is_file():
        raise FileNotFoundError(f"no token cache at {tokens}: run `python bench/gpu_suite.py --prepare-carry` "
                                "and carry .carry")
    ref_file = tokens.parent / "reference.json"
    if (ROOT / "models/nucleus-nano/model.safetensors").is_file():
        s.emit({"part": "nano", "case": "committed", **committed_reference(tokens, seq_len, s.device)})
    if ref_file.is_file() and not s.smoke:
        s.emit({"part": "nano", "case": "committed (prepare time, CPU)", **json.loads(ref_file.read_text())})

    budget = min(budget_s, max(s.left() - 45, 30))
    t = time.perf_counter()
    final1 = nano_stage(s, "stage1", "nano-pretrain.yaml", tokens, work, budget * 0.55, None, max_epochs)
    budget2 = budget - (time.perf_counter() - t)
    stage2 = replay_cache(tokens, work / "replay", seq_len, replay) if replay > 0 else tokens
    final2 = nano_stage(s, "stage2", "nano-finetune.yaml", stage2, work, max(budget2, 20), str(final1), max_epochs)

    # bf16 on disk, as the committed nano; then the card's figures on both held-out splits
    exports = {}
    for stage, folder in (("stage1", final1), ("final", final2)):
        exports[stage] = E.main(["--checkpoint", str(folder), "--out", str(work / f"nucleus-nano-gpu-{stage}"),
                                 "--dtype", "bfloat16"])
    figures = {}
    for stage, folder in exports.items():
        for split in ("stage1", "stage2"):
            blocks = B.PackedBlocks.from_cache(tokens / split, "val", seq_len)
            figures[f"new {stage} on {split}"] = heldout_ppl(folder, blocks, s.device)
        figures[f"new {stage} on passages"] = passages_ppl(folder, s.device)
    s.emit({"part": "nano", "case": "held-out", **figures})

    # the final model and both stages' logs, in pieces the device returns
    pack = work / "pack"
    shutil.copytree(exports["final"], pack / "nucleus-nano-gpu")
    for stage in ("stage1", "stage2"):
        for name in ("metrics.csv", "samples.log", "loss_curve.png", "train_config.json"):
            if (work / stage / name).is_file():
                (pack / "logs" / stage).mkdir(parents=True, exist_ok=True)
                shutil.copy(work / stage / name, pack / "logs" / stage / name)
    for cfg_file in pack.rglob("train_config.json"):
        portable_paths(cfg_file, work)
    tar = work / "nano-gpu.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted(pack.iterdir()):
            tf.add(p, arcname=p.name)
    parts = split_file(tar, s.out, PART_BYTES)
    s.emit({"part": "nano", "case": "packed", "parts": [p.name for p in parts], "bytes": tar.stat().st_size,
            "unpack": "cat nano-gpu.tar.part* | tar x"})
    shutil.rmtree(work, ignore_errors=True)


def portable_paths(cfg_file: Path, work: Path) -> None:
    """A train_config.json that says where its data came from in the repository's terms: paths under
    the checkout become relative ('.carry/tokens/stage2'), the run's temporary folder '<run>/'."""
    cfg = json.loads(cfg_file.read_text())
    for key, value in cfg.items():
        if isinstance(value, str):
            for prefix, instead in ((f"{ROOT}/", ""), (f"{work}/", "<run>/")):
                if value.startswith(prefix):
                    value = instead + value[len(prefix):]
            cfg[key] = value
    cfg_file.write_text(json.dumps(cfg, indent=1) + "\n")


def split_file(path: Path, out: Path, size: int) -> list[Path]:
    parts = []
    with open(path, "rb") as fh:
        while chunk := fh.read(size):
            parts.append(out / f"{path.name}.part{len(parts)}")
            parts[-1].write_bytes(chunk)
    return parts


# ---- main ---------------------------------------------------------------------------------------------
PARTS = ("nano", "train", "serve")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="folder for gpu_suite.json and nano-gpu.tar.part* ($OUT on the device)")
    p.add_argument("--cpu-smoke", action="store_true", help="every part on CPU, tiny shapes, a step or two")
    p.add_argument("--prepare-carry", action="store_true", help="build .carry/ here (corpus, token cache, wheels)")
    p.add_argument("--no-reference", action="store_true",
                   help="--prepare-carry without the committed nano's CPU perplexity")
    p.add_argument("--corpus", default=str(ROOT / "data/nano-corpus"))
    p.add_argument("--carry", default=str(CARRY))
    p.add_argument("--parts", default="nano,train,serve")
    p.add_argument("--deadline-s", type=float, default=480.0, help="the whole run; parts shrink to fit")
    p.add_argument("--nano-budget-s", type=float, default=170.0, help="both stages' training, probes included")
    p.add_argument("--nano-max-epochs", type=float, default=16.0)
    p.add_argument("--nano-replay", type=float, default=0.25,
                   help="stage-1 tokens mixed into stage 2, as a share of stage 2's (0: none)")
    p.add_argument("--train-budget-s", type=float, default=120.0)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--train-cases", help="comma-separated case names (default: all, in order; see train_cases)")
    p.add_argument("--serve-budget-s", type=float, default=110.0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.prepare_carry:
        return prepare_carry(Path(args.corpus), Path(args.carry), not args.no_reference)
    if not args.out:
        raise SystemExit("error: --out is required")
    # names are checked before any work: on a device a typo would cost a whole call
    unknown = [p for p in args.parts.split(",") if p not in PARTS]
    if unknown:
        raise SystemExit(f"error: unknown part {', '.join(unknown)} in --parts; known: {', '.join(PARTS)}")
    if args.train_cases:
        try:
            train_cases(args.cpu_smoke, args.train_cases.split(","))          # as part_train will
        except ValueError as e:
            raise SystemExit(f"error: --train-cases: {e}") from None
    if hint := carry_site_hint():                    # said at the top of the log, not only in a refusal
        print(f"warning: the liger cases will be skipped{hint}", file=sys.stderr, flush=True)
    s = Suite(Path(args.out), args.cpu_smoke, args.deadline_s)
    steps = 3 if s.smoke else args.train_steps
    parts = {"nano": lambda: part_nano(s, Path(args.carry) / "tokens", args.nano_budget_s, args.nano_max_epochs,
                                       args.nano_replay),
             "train": lambda: part_train(s, args.train_budget_s, steps,
                                         args.train_cases.split(",") if args.train_cases else None),
             "serve": lambda: part_serve(s, args.serve_budget_s)}
    for name in args.parts.split(","):
        try:
            parts[name]()
        except Exception as e:
            s.emit({"part": name, "case": "part", "error": f"{type(e).__name__}: {str(e)[:600]}"})
            s.clean()
    s.emit({"part": "suite", "case": "done", "elapsed_s": round(time.perf_counter() - s.start, 1)})
    print_table(s.results["rows"])
    return s.results


def print_table(rows: list[dict]) -> None:
    """The short table the device reply's output tail carries."""
    print("\npart  | case                      | figures")
    for r in rows:
        keys = ("parts", "tokens_per_second", "ratio_vs_a", "peak_mem_gib", "loss_max_rel_diff_vs_a", "mfu_vs_peak",
                "tok_per_s", "ms_per_step", "batch", "ttft_ms", "steps", "tokens_seen", "seconds", "error", "skipped")
        figs = ", ".join(f"{k}={r[k]}" for k in keys if r.get(k) is not None)
        if r.get("part") == "nano" and r.get("case") in ("held-out", "committed", "committed (prepare time, CPU)"):
            figs = ", ".join(f"{k}: {v['ppl']}" for k, v in r.items() if isinstance(v, dict))
        print(f"{r.get('part', ''):5} | {r.get('case', ''):25} | {figs[:300]}")


if __name__ == "__main__":
    main()
