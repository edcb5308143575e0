"""Training throughput: plain Hugging Face against the project's engine, same GPU, same tokens.

    python bench/train_speed.py                                  # on one GPU: the full 1.13B model
    python bench/train_speed.py --steps 6                        # without CUDA: a CPU smoke run

(a) baseline: `MistralForCausalLM`, fp32 master weights + bf16 autocast, SDPA, activation
    checkpointing, micro-batch 4 x 2048, `torch.optim.AdamW(fused=True)`: a plain loop.
(b) ours: `train/configs/rtx3090-pretrain.yaml` through `train/engine.py`.
Both see the same random token stream in the same order with the same optimizer settings, so their
loss curves must agree. Prints, per row, tokens/s, MFU (6N + attention FLOPs per token, against the
GPU's dense bf16 peak and against a matmul ceiling measured here), peak allocated memory, then
the ratio b/a and the largest relative difference between the two loss curves.
Without CUDA the model is scaled down to Nucleus-Nano at 128 tokens (the figures then only
exercise the code path).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from nucleus import architecture
from train import blocks as B
from train.engine import Data, TrainConfig, flops_per_token, peak_flops, run
from train.model_setup import enable_activation_checkpointing
from train.records import NoRecords

ROOT = Path(__file__).resolve().parent.parent

CPU_SMOKE = dict(size="nano", seq_len=128, micro_batch=2, tokens_per_step=512, precision="fp32",
                 compile=False, liger=False)     # CUDA-only levers of the 3090 configs


def matmul_ceiling(device: torch.device) -> float:
    """FLOP/s of a large bf16 matmul here (fp32 on CPU): the practical peak."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def baseline(cfg: TrainConfig, steps: int, device: torch.device) -> dict:
    """(a): the plain-HF recipe, written the way a user would, on the engine's token stream."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    torch.manual_seed(cfg.seed)
    model = architecture.build(cfg.size, seed=cfg.seed).to(device)          # fp32 master weights
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)        # whichever name this transformers has
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, min(cfg.warmup_steps, steps), steps,
                                                        min_lr_rate=cfg.min_lr_ratio)
    blocks = B.RandomBlocks(2**20, cfg.seq_len, model.config.vocab_size, cfg.seed)
    order = B.BatchOrder(len(blocks), cfg.micro_batch, cfg.seed)
    accum = max(1, round(cfg.tokens_per_step / (cfg.micro_batch * cfg.seq_len)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision != "fp32")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, step_s, k, t_first = [], [], 0, None
    for _ in range(steps):
        t_step = time.perf_counter()
        total = 0.0
        for _ in range(accum):
            x = blocks.batch(order.indices(k)).to(device)
            k += 1
            with autocast:
                loss = model(input_ids=x, labels=x).loss
            (loss / accum).backward()
            total += loss.item() / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        sync(device)
        step_s.append(time.perf_counter() - t_step)       # per step, for medians (bench/gpu_suite.py)
        if t_first is None:
            sync(device)
            t_first = time.perf_counter()
    sync(device)
    step_tokens = accum * cfg.micro_batch * cfg.seq_len
    return {"losses": losses, "step_seconds": step_s, "step_tokens": step_tokens,
            "tokens_per_second": (steps - 1) * step_tokens / (time.perf_counter() - t_first),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "n_params": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "train/configs/rtx3090-pretrain.yaml"))
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {"max_steps": args.steps, "log_every": max(1, args.steps // 5), "warmup_steps": max(1, args.steps // 10)}
    if device.type == "cpu":
        overrides.update(CPU_SMOKE)
    cfg = TrainConfig.load(args.config, **overrides)
    ceiling = matmul_ceiling(device)
    peak = peak_flops(cfg, device)

    rows = {"a_plain_hf": baseline(cfg, args.steps, device)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    vocab = architecture.config(cfg.size).vocab_size
    rows["b_nucleus"] = run(cfg, Data(B.RandomBlocks(2**20, cfg.seq_len, vocab, cfg.seed), None, {}), NoRecords())
    rows["b_nucleus"]["tokens_per_second"] = rows["b_nucleus"].get("steady_tokens_per_second",
                                                                   rows["b_nucleus"]["tokens_per_second"])
    fpt = flops_per_token(architecture.config(cfg.size), rows["a_plain_hf"]["n_params"], cfg.seq_len)
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke: nano, 128 tokens)",
           "matmul_ceiling_tflops": round(ceiling / 1e12, 2), "peak_tflops": peak / 1e12 if peak else None}
    for name, r in rows.items():
        tps = r["tokens_per_second"]
        out[name] = {"tokens_per_second": round(tps, 1),
                     "mfu_vs_peak": round(fpt * tps / peak, 4) if peak else None,
                     "mfu_vs_ceiling": round(fpt * tps / ceiling, 4),
                     "peak_mem_gib": None if r["peak_mem_gib"] is None else round(r["peak_mem_gib"], 2)}
        print(json.dumps({"row": name, **out[name]}), flush=True)
    a, b = rows["a_plain_hf"]["losses"], rows["b_nucleus"]["losses"]
    out["ratio_b_over_a"] = round(rows["b_nucleus"]["tokens_per_second"] / rows["a_plain_hf"]["tokens_per_second"], 3)
    out["loss_curve_max_rel_diff"] = round(max(abs(x - y) / abs(x) for x, y in zip(a, b)), 5)
    out["loss_curves"] = {"a": [round(x, 4) for x in a], "b": [round(x, 4) for x in b]}
    print(json.dumps({k: v for k, v in out.items() if k not in ("a_plain_hf", "b_nucleus")}), flush=True)
    assert len(a) == len(b) and all(math.isfinite(x) for x in a + b)
    return out


if __name__ == "__main__":
    main()
