"""Peak memory and throughput of a training recipe: N real optimizer steps on random tokens.

    python bench/train_memory.py --config train/configs/rtx3090-pretrain.yaml --steps 10   # on a GPU
    python bench/train_memory.py --steps 6                                                # CPU: scaled down

It runs the project's engine (train/engine.py) exactly as training does (same model, precision,
accumulation, checkpointing, optimizer), only the data is random and nothing is saved. On a
machine without CUDA the model is scaled down to Nucleus-Nano at 256 tokens, so the code path is
exercised in minutes; the figures are then only those of that CPU. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nucleus import architecture
from train import blocks as B
from train.engine import Data, TrainConfig, run
from train.records import NoRecords

CPU_SCALE = dict(size="nano", seq_len=256, micro_batch=2, tokens_per_step=1024, precision="fp32",
                 compile=False, liger=False)     # CUDA-only levers of the 3090 configs
GIB = 2**30


def random_data(cfg: TrainConfig) -> Data:
    """Random tokens in the shape of the real data: no dataset, no tokenising."""
    vocab = architecture.config(cfg.size).vocab_size
    return Data(B.RandomBlocks(2**20, cfg.seq_len, vocab, cfg.seed), None, {"source": "random tokens"})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(Path(__file__).parent.parent / "train/configs/rtx3090-pretrain.yaml"))
    p.add_argument("--steps", type=int, default=10, help="optimizer steps (the first is not timed)")
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--accumulation", type=int, default=None, help="micro-batches per optimizer step")
    p.add_argument("--activation-checkpointing", choices=["true", "false"], default=None)
    p.add_argument("--budget-gib", type=float, default=22.0, help="the 24 GB card's usable memory")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    overrides = {"max_steps": args.steps, "warmup_steps": 1, "log_every": max(1, args.steps // 5)}
    scaled = not torch.cuda.is_available()
    if scaled:
        overrides.update(CPU_SCALE)
    for key in ("micro_batch", "seq_len"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.activation_checkpointing:
        overrides["activation_checkpointing"] = args.activation_checkpointing == "true"
    cfg = TrainConfig.load(args.config, **overrides)
    if args.accumulation:
        cfg.tokens_per_step = args.accumulation * cfg.micro_batch * cfg.seq_len
    s = run(cfg, random_data(cfg), NoRecords())          # no eval, checkpoints, logs or export
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "scaled_down_for_cpu": scaled, "size": cfg.size, "params": s["n_params"], "seq_len": cfg.seq_len,
        "micro_batch": cfg.micro_batch, "tokens_per_step": s["step_tokens"], "precision": s["precision"],
        "activation_checkpointing": cfg.activation_checkpointing, "steps": s["steps"],
        "tokens_per_second": round(s.get("steady_tokens_per_second", s["tokens_per_second"]), 1),
        "mfu": None if s.get("mfu") is None else round(s["mfu"], 4),
        "peak_allocated_gib": None if s["peak_mem_gib"] is None else round(s["peak_mem_gib"], 2),
        "first_loss": round(s["losses"][0], 4), "last_loss": round(s["losses"][-1], 4),
    }
    if s["peak_mem_gib"] is not None:
        result["fits_budget"] = s["peak_mem_gib"] <= args.budget_gib
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
