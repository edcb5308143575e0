"""The one training loop, on accelerate: precision, accumulation, eval, checkpoints, resume, logs.

`pretrain.py` and `finetune.py` are thin entry points over `run(TrainConfig)`. The model code in
`nucleus/` knows nothing of this file: mixed precision, activation checkpointing and compile are
applied here. Checkpoints and the output folder live in `checkpoint.py`, the run's other files
in `records.py`; benchmarks pass their own data and `records.NoRecords()`. Multi-GPU is
`accelerate launch` (DDP) with no code change.

Log line, one per `log_every` steps:  step | loss | lr | tok/s | MFU | eta
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from tqdm.auto import tqdm
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from nucleus.tokenizer import load_tokenizer

from train import checkpoint
from train import blocks as B
from train import data as D
from train.config import ConfigError, TrainConfig, add_config_flags, config_from_args
from train.export import hardware
from train.model_setup import build_model, check_init, check_liger, init_folder, scratch_tokenizer
from train.records import NoRecords, RunRecords

# Dense bf16 peak TFLOP/s (datasheet, no sparsity), matched against the CUDA device name.
PEAK_TFLOPS = {"3090": 71, "4090": 165, "A100": 312, "H100": 989, "H200": 989}


@dataclass
class Data:
    """Blocks whose batch() gives token ids (B, T), trained on as their own labels, or a dict of
    model inputs (input_ids, labels, position_ids: train/chat.py's packed examples)."""
    train: B.PackedBlocks | B.RandomBlocks
    val: B.PackedBlocks | None
    meta: dict
    chat_template: str | None = None     # stored in the exported tokenizer when set


def model_inputs(batch, device) -> dict[str, torch.Tensor]:
    """A batch as keyword arguments of the model's forward, on `device`."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch, "labels": batch}
    return {k: v.to(device) for k, v in batch.items()}


# ---- the pieces run() puts together ------------------------------------------------------------------
def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # gradient_as_bucket_view: DDP's gradients are views into its all-reduce buckets instead of a
    # second copy (measured on gloo, 1.07 GB of weights: +1.08 GB instead of +2.08 GB per process)
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True)
    # several processes without CUDA (`accelerate launch --multi_gpu` or torchrun on CPU): without
    # cpu=True accelerate gives each process a world of one, i.e. N unsynchronised copies of the run
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(mixed_precision=_mixed_precision(cfg), kwargs_handlers=[ddp], cpu=cpu)
    if acc.distributed_type == DistributedType.FSDP:
        raise ConfigError("FSDP is not supported: checkpoints, samples and the export assume whole weights on "
                          "every process; use DDP (train/configs/multi-gpu-ddp.yaml), see docs/training.md")
    if acc.num_processes != int(os.environ.get("WORLD_SIZE", acc.num_processes)):
        raise ConfigError(f"launched {os.environ['WORLD_SIZE']} processes but accelerate sees {acc.num_processes}; "
                          "launch with `accelerate launch --multi_gpu --num_processes N` (on CPU too)")
    return acc


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[cfg.precision]


def load_data(cfg: TrainConfig, tokenizer, acc: Accelerator) -> Data:
    spec = D.DataSpec(cfg.dataset, cfg.text_field, cfg.split, cfg.dataset_config, cfg.validation_split,
                      cfg.validation_fraction, cfg.max_documents, cfg.streaming, cfg.document_separator,
                      cfg.dataset_files)
    with acc.main_process_first():                     # the main process tokenises, the others reuse
        cache = D.tokenize_to_cache(spec, tokenizer, cfg.cache_dir, say=acc.print)
    meta = json.loads((cache / "meta.json").read_text())
    val = B.PackedBlocks.from_cache(cache, "val", cfg.seq_len)
    acc.print(f"data: {meta['documents']:,} documents, {meta['tokens']:,} tokens; {meta.get('held_out', '')}: "
              f"{meta['val_documents']:,} documents, {meta['val_tokens']:,} tokens")
    if len(val) == 0:
        acc.print(f"no evaluation: the held-out set has {meta['val_tokens']:,} tokens, fewer than one block of "
                  f"seq_len {cfg.seq_len} (raise validation_fraction or set validation_split)")
    return Data(B.PackedBlocks.from_cache(cache, "train", cfg.seq_len), val if len(val) else None, meta)


def make_optimizer(cfg: TrainConfig, model, device: torch.device):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, fused=device.type == "cuda", **kw)


def prepare(acc: Accelerator, model, optimizer):
    """accelerate's prepare, minus its fp32 copy of every output: under mixed precision it converts
    the logits to fp32 (4 x 2048 x 32000 x 4 B = 1 GB per micro-batch) that the loop never reads;
    the loss is computed in fp32 inside the model either way. Autocast is applied by the loop."""
    model, optimizer = acc.prepare(model, optimizer)
    acc.unwrap_model(model, keep_fp32_wrapper=False)     # restores the plain forward, in place
    return model, optimizer


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
    """6 x non-embedding parameters (forward + backward; the input embedding is a lookup, not a
    matmul, while an untied output head is one) plus attention scores and values:
    12 x layers x hidden x seq_len (PaLM, appendix B)."""
    embedding = 0 if model_cfg.tie_word_embeddings else model_cfg.vocab_size * model_cfg.hidden_size
    return 6 * (n_params - embedding) + 12 * model_cfg.num_hidden_layers * model_cfg.hidden_size * seq_len


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


@torch.no_grad()
def evaluate(model, blocks, cfg: TrainConfig, acc: Accelerator) -> float | None:
    """Mean loss over the first `eval_batches` global batches of the held-out blocks, shared out
    among the processes. `model` is the unwrapped model: a DDP forward is a collective (buffer
    broadcast), and the processes may get unequal numbers of batches here."""
    n = min(len(blocks), cfg.eval_batches * cfg.micro_batch * acc.num_processes)
    model.eval()
    total, count = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
    for start in range(acc.process_index * cfg.micro_batch, n, cfg.micro_batch * acc.num_processes):
        batch = model_inputs(blocks.batch(range(start, min(start + cfg.micro_batch, n))), acc.device)
        rows = len(batch["input_ids"])
        with acc.autocast():
            total += model(**batch).loss.float() * rows
        count += rows
    model.train()
    total, count = acc.reduce(total, "sum"), acc.reduce(count, "sum")
    return (total / count).item()


# ---- the run ---------------------------------------------------------------------------------------
def run(cfg: TrainConfig, data: Data | None = None, records: NoRecords | None = None, data_loader=None) -> dict:
    """Train per `cfg`; returns a summary (final losses, tokens seen, export path...).
    `data` and `records` default to cfg's dataset and OUTPUT_DIR's files (benchmarks pass their own);
    `data_loader(cfg, tokenizer, acc) -> Data` replaces load_data (the instruct stage's examples)."""
    check_liger(cfg)                                   # before the output folder and the data
    check_init(cfg)
    acc = make_accelerator(cfg)
    set_seed(cfg.seed)
    say, is_main = acc.print, acc.is_main_process
    records = records or RunRecords(cfg, is_main)
    resume_from = records.start(cfg, is_main, say)     # refuses to clobber a previous run
    acc.wait_for_everyone()

    # -- data before the model: a data error costs seconds, not a 5 GB model build --
    tokenizer_dir = resume_from or init_folder(cfg)
    data = data or (data_loader or load_data)(
        cfg, load_tokenizer(tokenizer_dir) if tokenizer_dir else scratch_tokenizer(cfg), acc)
    model, tokenizer = build_model(cfg, resume_from)
    if data.chat_template:
        tokenizer.chat_template = data.chat_template
    n_params = sum(p.numel() for p in model.parameters())
    order = B.BatchOrder(len(data.train), cfg.micro_batch, cfg.seed, acc.process_index, acc.num_processes)
    accum = max(1, round(cfg.tokens_per_step / (cfg.micro_batch * cfg.seq_len * acc.num_processes)))
    step_tokens = accum * cfg.micro_batch * cfg.seq_len * acc.num_processes
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * order.per_epoch / accum))

    optimizer = make_optimizer(cfg, model, acc.device)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(cfg.warmup_steps, total_steps), total_steps, min_lr_rate=cfg.min_lr_ratio)
    model, optimizer = prepare(acc, model, optimizer)
    fwd = torch.compile(model) if cfg.compile else model
    raw = acc.unwrap_model(model)

    state = {"step": 0, "micro_step": 0, "tokens_seen": 0, "val_loss": None, "elapsed_s": 0.0,
             "data": data.meta, "hardware": hardware(acc.num_processes)}
    if resume_from:
        state.update(checkpoint.restore(resume_from, optimizer, scheduler))
        state["hardware"] = hardware(acc.num_processes)
        say(f"resumed from {resume_from} at step {state['step']}")
    records.open(state["step"])

    flops_tok = flops_per_token(raw.config, n_params, cfg.seq_len)
    peak = peak_flops(cfg, acc.device)
    say(f"{cfg.stage}: {n_params / 1e6:,.1f}M params | {len(data.train):,} blocks x {cfg.seq_len} | "
        f"{step_tokens:,} tokens/step ({cfg.micro_batch} x {cfg.seq_len} x {accum} accum x {acc.num_processes} proc) | "
        f"{total_steps} steps | precision {'fp32' if acc.mixed_precision == 'no' else acc.mixed_precision} | "
        f"device {acc.device}")

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
            batch = model_inputs(data.train.batch(order.indices(state["micro_step"])), acc.device)   # (B, T) each
            state["micro_step"] += 1
            with nullcontext() if micro == accum - 1 else acc.no_sync(model):
                with acc.autocast():
                    loss = fwd(**batch).loss
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

        # -- log line: step | loss | lr | tok/s | MFU | eta --
        if state["step"] % cfg.log_every == 0 or state["step"] == stop_at:
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            tok_s = interval_steps * step_tokens / (now - interval_start)
            mfu = flops_tok * tok_s / (peak * acc.num_processes) if peak else None
            rate = (state["step"] - session_start_step) / (now - session_start)
            eta = (total_steps - state["step"]) / rate if rate > 0 else float("inf")
            mean = interval_loss / interval_steps
            say(f"step {state['step']:>6}/{total_steps} | loss {mean:.4f} | lr {lr:.2e} | "
                f"tok/s {tok_s:,.0f} | MFU {'-' if mfu is None else f'{mfu:.1%}'} | eta {_fmt_time(eta)}")
            records.row(step=state["step"], loss=f"{mean:.6f}", lr=f"{lr:.6e}", tok_per_s=f"{tok_s:.1f}",
                        mfu="" if mfu is None else f"{mfu:.4f}", tokens_seen=state["tokens_seen"],
                        elapsed_s=f"{state['elapsed_s'] + now - session_start:.1f}")
            for name, value in (("train/loss", mean), ("train/lr", lr), ("train/tok_per_s", tok_s)):
                records.scalar(name, value, state["step"])
            interval_loss, interval_steps, interval_start = 0.0, 0, time.perf_counter()

        # -- held-out loss and samples --
        last = state["step"] == total_steps
        if data.val is not None and (state["step"] % cfg.eval_every == 0 or last):
            state["val_loss"] = evaluate(raw, data.val, cfg, acc)
            ppl = math.exp(min(state["val_loss"], 50))
            say(f"eval step {state['step']} | held-out loss {state['val_loss']:.4f} | ppl {ppl:.2f}")
            records.row(step=state["step"], val_loss=f"{state['val_loss']:.6f}", val_ppl=f"{ppl:.4f}",
                        tokens_seen=state["tokens_seen"])
            records.scalar("eval/loss", state["val_loss"], state["step"])
            records.samples(raw, tokenizer, state["step"], say)

        # -- checkpoint (every process calls: gathering weights may be collective) --
        if state["step"] % cfg.save_every == 0 or last or state["step"] == stop_at:
            records.save(acc, model, tokenizer, optimizer, scheduler,
                         {**state, "elapsed_s": state["elapsed_s"] + time.perf_counter() - session_start})
    bar.close()
    state["elapsed_s"] += time.perf_counter() - session_start

    summary = {"steps": state["step"], "total_steps": total_steps, "tokens_seen": state["tokens_seen"],
               "losses": losses, "val_loss": state["val_loss"], "n_params": n_params,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
               "seconds": state["elapsed_s"], "device": str(acc.device), "hardware": state["hardware"],
               "data": data.meta, "step_tokens": step_tokens, "precision": acc.mixed_precision,
               "processes": acc.num_processes,
               "tokens_per_second": (state["step"] - session_start_step) * step_tokens
               / max(time.perf_counter() - session_start, 1e-9)}
    # throughput after the first step (which pays for compilation, allocator warm-up, ...)
    steady_steps = state["step"] - session_start_step - 1
    if first_step_done and steady_steps > 0:
        summary["steady_tokens_per_second"] = steady_steps * step_tokens / (time.perf_counter() - first_step_done)
        summary["mfu"] = (flops_tok * summary["steady_tokens_per_second"] / (peak * acc.num_processes)
                          if peak else None)
    if state["step"] >= total_steps:
        summary["export"] = records.finish(raw, tokenizer, summary)
    acc.wait_for_everyone()
    records.close()
    say(last_line(cfg, summary))
    return summary


def last_line(cfg: TrainConfig, summary: dict) -> str:
    """The run's outcome in one line: where the final model is and its held-out figure, or where
    the run stopped and how to go on."""
    held_out = "no held-out set" if summary["val_loss"] is None else \
        f"held-out loss {summary['val_loss']:.4f}, perplexity {math.exp(min(summary['val_loss'], 50)):.2f}"
    if summary["steps"] < summary["total_steps"]:
        return (f"stopped at step {summary['steps']} of {summary['total_steps']} ({held_out}); continue with the "
                f"same command and --resume auto")
    where = summary.get("export") or f"{cfg.output_dir}/final"
    return f"done: the final model is in {where} ({held_out}); try it: python app.py --model {where}"


# ---- shared entry point of pretrain.py, finetune.py and instruct.py -----------------------------------------------
def main(argv, description: str, default_config: Path, stage: str, data_loader=None) -> dict:
    """Parse flags over the YAML config and run; a config or data error is one line, no traceback."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    add_config_flags(parser)
    parser.set_defaults(config=str(default_config))
    try:
        cfg = config_from_args(parser.parse_args(argv))
        cfg.stage = stage
        if stage in ("finetune", "instruct") and cfg.init == "scratch":
            raise ConfigError(f"{stage}: needs a starting model: set init (the previous stage's output folder "
                              "or a Hub id)")
        return run(cfg, data_loader=data_loader)
    except (ConfigError, D.DataError) as e:
        raise SystemExit(f"error: {e}") from None
