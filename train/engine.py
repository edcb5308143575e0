"""The one training loop, on accelerate: precision, accumulation, eval, checkpoints, resume, logs.

`pretrain.py` and `finetune.py` are thin entry points over `run(TrainConfig)`. The model code in
`nucleus/` knows nothing of this file: mixed precision, activation checkpointing and compile are
applied here. Multi-GPU is `accelerate launch` (DDP) with no code change.

Log line, one per `log_every` steps:  step | loss | lr | tok/s | MFU | eta
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run as a script from anywhere
from nucleus import architecture  # noqa: E402
from nucleus.generation import generate  # noqa: E402
from nucleus.loading import LoadedModel, load  # noqa: E402
from nucleus.presets import load_presets  # noqa: E402
from nucleus.tokenizer import load_tokenizer  # noqa: E402

from train import data as D  # noqa: E402
from train.config import TrainConfig, add_config_flags, config_from_args  # noqa: E402
from train.export import atomic_folder, export, push  # noqa: E402

# Dense bf16 peak TFLOP/s (datasheet, no sparsity), matched against the CUDA device name.
PEAK_TFLOPS = {"3090": 71, "4090": 165, "A100": 312, "H100": 989, "H200": 989}


# ---- small pieces -------------------------------------------------------------------------------
class _NullWriter:
    """TensorBoard stand-in when tensorboard is not installed."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(folder))
    except ImportError:
        return _NullWriter()


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def flops_per_token(model_cfg, n_params: int, seq_len: int) -> float:
    """6N for the weights (forward + backward) plus attention scores and values:
    12 x layers x hidden x seq_len (PaLM, appendix B)."""
    return 6 * n_params + 12 * model_cfg.num_hidden_layers * model_cfg.hidden_size * seq_len


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _make_optimizer(cfg: TrainConfig, model, device: torch.device):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise SystemExit("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(groups, **kw)
    if cfg.optimizer != "adamw":
        raise SystemExit(f"unknown optimizer {cfg.optimizer!r}; use adamw or adamw8bit")
    return torch.optim.AdamW(groups, fused=device.type == "cuda", **kw)


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[cfg.precision]


# ---- checkpoints ------------------------------------------------------------------------------
def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted((p for p in (output_dir / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")),
                  key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(output_dir: Path, model, tokenizer, optimizer, scheduler, state: dict, cfg: TrainConfig) -> Path:
    """Write checkpoints/step-N atomically, then keep only the last `keep_last`."""
    final = output_dir / "checkpoints" / f"step-{state['step']:07d}"
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp)                       # safetensors + config.json
        tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / "trainer_state.pt")            # tensors and numbers only: loads with weights_only
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        (tmp / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    for old in _checkpoints(output_dir)[:-cfg.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not (path / "trainer_state.json").is_file():
            raise SystemExit(f"--resume {path}: not a checkpoint folder (trainer_state.json missing)")
        return path
    found = _checkpoints(Path(cfg.output_dir))
    return found[-1] if found else None


# ---- the run ----------------------------------------------------------------------------------
def run(cfg: TrainConfig) -> dict:
    """Train per `cfg`; returns a summary (final losses, tokens seen, export path...)."""
    acc = Accelerator(mixed_precision=_mixed_precision(cfg))
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    resume_from = find_resume(cfg)
    say = acc.print

    # -- model and tokenizer: one loader for checkpoints, Hub ids and resume --
    start_from = resume_from or (None if cfg.init == "scratch" else cfg.init)
    if start_from:
        lm = load(start_from, device="cpu", dtype=torch.float32, quantize="none")
        model, tokenizer = lm.model, lm.tokenizer
    else:
        model, tokenizer = architecture.build(cfg.size, seed=cfg.seed), load_tokenizer()
    if cfg.seq_len > model.config.max_position_embeddings:
        raise SystemExit(f"seq_len {cfg.seq_len} exceeds the model's context ({model.config.max_position_embeddings})")
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    # -- data --
    if cfg.benchmark:
        train_blocks = D.RandomBlocks(2**20, cfg.seq_len, model.config.vocab_size, cfg.seed)  # ample, cheap to shuffle
        val_blocks, data_meta = None, {"tokens": 0, "documents": 0, "source": "random tokens"}
    else:
        spec = D.DataSpec(cfg.dataset, cfg.text_field, cfg.split, cfg.dataset_config, cfg.validation_split,
                          cfg.validation_fraction, cfg.max_documents, cfg.streaming)
        with acc.main_process_first():
            cache = D.tokenize_to_cache(spec, tokenizer, cfg.cache_dir)
        data_meta = json.loads((cache / "meta.json").read_text())
        train_blocks = D.PackedBlocks.from_cache(cache, "train", cfg.seq_len)
        val_blocks = D.PackedBlocks.from_cache(cache, "val", cfg.seq_len)
    order = D.BatchOrder(len(train_blocks), cfg.micro_batch, cfg.seed, acc.process_index, acc.num_processes)
    accum = max(1, round(cfg.tokens_per_step / (cfg.micro_batch * cfg.seq_len * acc.num_processes)))
    step_tokens = accum * cfg.micro_batch * cfg.seq_len * acc.num_processes
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * order.per_epoch / accum))

    optimizer = _make_optimizer(cfg, model, acc.device)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(cfg.warmup_steps, total_steps), total_steps, min_lr_rate=cfg.min_lr_ratio)
    model, optimizer = acc.prepare(model, optimizer)
    fwd = torch.compile(model) if cfg.compile else model
    raw = acc.unwrap_model(model)

    state = {"step": 0, "micro_step": 0, "tokens_seen": 0, "val_loss": None, "elapsed_s": 0.0}
    if resume_from:
        saved = torch.load(resume_from / "trainer_state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        state.update(json.loads((resume_from / "trainer_state.json").read_text()))
        say(f"resumed from {resume_from} at step {state['step']}")

    flops_tok = flops_per_token(raw.config, n_params, cfg.seq_len)
    peak = peak_flops(cfg, acc.device)
    say(f"{cfg.stage}: {n_params / 1e6:,.1f}M params | {len(train_blocks):,} blocks x {cfg.seq_len} | "
        f"{step_tokens:,} tokens/step ({cfg.micro_batch} x {cfg.seq_len} x {accum} accum x {acc.num_processes} proc) | "
        f"{total_steps} steps | precision {acc.mixed_precision} | device {acc.device}")

    is_main = acc.is_main_process
    writer = _tensorboard(out / "tensorboard") if is_main and not cfg.benchmark else _NullWriter()
    csv_path = out / "metrics.csv"
    if is_main and not cfg.benchmark:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        if not resume_from:
            csv_path.write_text("step,loss,lr,tok_per_s,mfu,val_loss,val_ppl,tokens_seen,elapsed_s\n")

    def log_row(**row):
        if is_main and not cfg.benchmark:
            with open(csv_path, "a", newline="") as fh:
                csv.writer(fh).writerow([row.get(k, "") for k in
                                         ("step", "loss", "lr", "tok_per_s", "mfu", "val_loss", "val_ppl",
                                          "tokens_seen", "elapsed_s")])

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    bar = tqdm(total=total_steps, initial=state["step"], disable=not is_main, desc=cfg.stage, dynamic_ncols=True)
    interval_loss, interval_steps, interval_start = 0.0, 0, time.perf_counter()
    session_start, session_start_step = time.perf_counter(), state["step"]
    losses: list[float] = []
    first_step_done = None
    stop_at = min(total_steps, cfg.halt_after or total_steps)
    while state["step"] < stop_at:
        # -- one optimizer step: `accum` micro-batches, gradients synced only on the last --
        step_loss = torch.zeros((), device=acc.device)
        for micro in range(accum):
            batch = train_blocks.batch(order.indices(state["micro_step"])).to(acc.device)   # (B, T)
            state["micro_step"] += 1
            sync = nullcontext() if micro == accum - 1 else acc.no_sync(model)
            with sync:
                loss = fwd(input_ids=batch, labels=batch).loss
                acc.backward(loss / accum)
            step_loss += loss.detach() / accum
        if cfg.grad_clip:
            acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens_seen"] += step_tokens
        step_loss = acc.reduce(step_loss, reduction="mean").item()   # .item() syncs: timings below are real
        losses.append(step_loss)
        if state["step"] == session_start_step + 1:
            first_step_done = time.perf_counter()                   # steady-state timing starts here
        interval_loss += step_loss
        interval_steps += 1
        bar.update(1)

        if state["step"] % cfg.log_every == 0 or state["step"] == stop_at:
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            tok_s = interval_steps * step_tokens / (now - interval_start)
            mfu = flops_tok * tok_s / (peak * acc.num_processes) if peak else None
            rate = (state["step"] - session_start_step) / (now - session_start)
            eta = (total_steps - state["step"]) / rate if rate > 0 else float("inf")
            mean = interval_loss / interval_steps
            if is_main:
                bar.write(f"step {state['step']:>6}/{total_steps} | loss {mean:.4f} | lr {lr:.2e} | "
                          f"tok/s {tok_s:,.0f} | MFU {'-' if mfu is None else f'{mfu:.1%}'} | eta {_fmt_time(eta)}")
            log_row(step=state["step"], loss=f"{mean:.6f}", lr=f"{lr:.6e}", tok_per_s=f"{tok_s:.1f}",
                    mfu="" if mfu is None else f"{mfu:.4f}", tokens_seen=state["tokens_seen"],
                    elapsed_s=f"{state['elapsed_s'] + now - session_start:.1f}")
            writer.add_scalar("train/loss", mean, state["step"])
            writer.add_scalar("train/lr", lr, state["step"])
            writer.add_scalar("train/tok_per_s", tok_s, state["step"])
            interval_loss, interval_steps, interval_start = 0.0, 0, time.perf_counter()

        last = state["step"] == total_steps
        if val_blocks is not None and (state["step"] % cfg.eval_every == 0 or last):
            state["val_loss"] = evaluate(fwd, val_blocks, cfg, acc)
            if state["val_loss"] is not None:
                ppl = math.exp(min(state["val_loss"], 50))
                if is_main:
                    bar.write(f"eval step {state['step']} | held-out loss {state['val_loss']:.4f} | ppl {ppl:.2f}")
                log_row(step=state["step"], val_loss=f"{state['val_loss']:.6f}", val_ppl=f"{ppl:.4f}",
                        tokens_seen=state["tokens_seen"])
                writer.add_scalar("eval/loss", state["val_loss"], state["step"])
            if is_main:
                write_samples(raw, tokenizer, cfg, state["step"], out, bar.write)
                plot_losses(csv_path, out / "loss_curve.png")
        if not cfg.benchmark and is_main and (state["step"] % cfg.save_every == 0 or last
                                              or state["step"] == stop_at):
            state_now = {**state, "elapsed_s": state["elapsed_s"] + time.perf_counter() - session_start}
            save_checkpoint(out, raw, tokenizer, optimizer, scheduler, state_now, cfg)
        acc.wait_for_everyone()
    bar.close()
    state["elapsed_s"] += time.perf_counter() - session_start

    summary = {"steps": state["step"], "total_steps": total_steps, "tokens_seen": state["tokens_seen"],
               "losses": losses, "val_loss": state["val_loss"], "n_params": n_params,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
               "seconds": state["elapsed_s"], "device": str(acc.device), "data": data_meta,
               "tokens_per_second": (state["step"] - session_start_step) * step_tokens
               / max(time.perf_counter() - session_start, 1e-9)}
    # throughput after the first step (which pays for compilation, allocator warm-up, ...)
    steady_steps = state["step"] - session_start_step - 1
    if first_step_done and steady_steps > 0:
        summary["steady_tokens_per_second"] = steady_steps * step_tokens / (time.perf_counter() - first_step_done)
        summary["mfu"] = (flops_tok * summary["steady_tokens_per_second"] / (peak * acc.num_processes)
                          if peak else None)
    summary["step_tokens"], summary["precision"] = step_tokens, acc.mixed_precision
    if state["step"] >= total_steps and not cfg.benchmark and is_main:
        summary["export"] = str(export(raw, tokenizer, out / "final", cfg, summary))
        if cfg.push_to_hub:
            push(out / "final", cfg.push_to_hub)
    acc.wait_for_everyone()
    writer.close()
    return summary


@torch.no_grad()
def evaluate(model, blocks, cfg: TrainConfig, acc: Accelerator) -> float | None:
    """Mean loss over the first `eval_batches` micro-batches of the held-out blocks."""
    n = min(len(blocks), cfg.eval_batches * cfg.micro_batch)
    if n == 0:
        return None
    model.eval()
    total, count = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
    for start in range(acc.process_index * cfg.micro_batch, n, cfg.micro_batch * acc.num_processes):
        batch = blocks.batch(range(start, min(start + cfg.micro_batch, n))).to(acc.device)
        total += model(input_ids=batch, labels=batch).loss.float() * len(batch)
        count += len(batch)
    model.train()
    total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
    return (total / count).item()


def write_samples(model, tokenizer, cfg: TrainConfig, step: int, out: Path, echo) -> None:
    """A few generations from the presets, appended to samples.log (fixed seed: comparable over time)."""
    presets = load_presets()
    lm = LoadedModel(model, tokenizer, "training", out, next(model.parameters()).device,
                     next(model.parameters()).dtype, 0)
    was_training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    lines = [f"=== step {step}"]
    try:
        for name in cfg.sample_presets:
            if name not in presets:
                continue
            p = presets[name]
            settings = p.settings.replace(seed=cfg.seed, stop=[],
                                          max_new_tokens=min(cfg.sample_tokens, cfg.seq_len // 2))
            text = generate(lm, p.prompt, settings).text
            lines.append(f"--- {name}: {p.prompt + text!r}")
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    with open(out / "samples.log", "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    for line in lines[1:]:
        echo(line[:200])


def plot_losses(csv_path: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="held-out loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---- shared entry point of pretrain.py and finetune.py -----------------------------------------
def main(argv, description: str, default_config: Path, stage: str) -> dict:
    import argparse

    parser = argparse.ArgumentParser(description=description)
    add_config_flags(parser)
    parser.set_defaults(config=str(default_config))
    cfg = config_from_args(parser.parse_args(argv))
    cfg.stage = stage
    if stage == "finetune" and cfg.init == "scratch":
        raise SystemExit("fine-tuning needs a starting model: set init (the stage-1 output folder or a Hub id)")
    return run(cfg)
