"""Checkpoints and the output folder: where a run starts, what it saves, how it resumes.

    OUTPUT_DIR/checkpoints/step-NNNNNNN/   model.safetensors + config.json + tokenizer (nucleus.load reads it)
                                           trainer_state.pt   optimizer, scheduler, RNG (tensors only)
                                           trainer_state.json step, micro-batch position, tokens, data, hardware
                                           train_config.json  the resolved config

A fresh run refuses an output folder that holds a previous run unless `resume` or `overwrite`
is set, so re-running a command never destroys (or silently mixes with) the earlier run. After
a resume, metrics.csv and samples.log lose the rows past the checkpoint (TensorBoard is purged
by the writer), so no step appears twice.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch

from train.config import ConfigError, TrainConfig
from train.export import atomic_folder

RUN_FILES = ("metrics.csv", "samples.log", "loss_curve.png", "train_config.json", "tensorboard")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (a `.tmp` folder is an interrupted write)."""
    found = (p for p in (Path(output_dir) / "checkpoints").glob("step-*") if re.fullmatch(r"step-\d+", p.name))
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def step_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "trainer_state.json").read_text())["step"]


# ---- where a run starts ----------------------------------------------------------------------------
def start(cfg: TrainConfig, is_main: bool, say=print) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run in an empty (or emptied) output_dir.
    Every process calls this; only the main one deletes anything."""
    out = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run in output_dir, or replace it")
    if cfg.resume == "auto":
        found = checkpoints(out)
        if found:
            return _drop_later(found[-1], out, is_main, say)
        say(f"--resume auto: no checkpoint in {out / 'checkpoints'}; starting fresh")
        if is_main:                        # logs of a run that never saved a checkpoint cannot be continued
            _clear(out, RUN_FILES)
        return None
    if cfg.resume:
        path = Path(cfg.resume)
        if not (path / "trainer_state.json").is_file():
            raise ConfigError(f"resume: {path} is not a checkpoint folder (trainer_state.json missing)")
        return _drop_later(path, out, is_main, say)
    if out.is_dir() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"output_dir {out} holds a previous run; continue it with --resume auto, replace it "
                              "with --overwrite, or choose another --output-dir")
        say(f"--overwrite: deleting the previous run in {out}")
        if is_main:
            _clear(out, [p.name for p in out.iterdir()])
    return None


def _clear(out: Path, names) -> None:
    for name in names:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _drop_later(resume_from: Path, out: Path, is_main: bool, say) -> Path:
    """Resuming from step N abandons what came after it: checkpoints past N would otherwise sort
    as newer than the new run's and be picked by the next `--resume auto` (or prune the new ones)."""
    n = step_of(resume_from)
    later = [p for p in checkpoints(out) if int(p.name.split("-")[1]) > n and p.resolve() != resume_from.resolve()]
    if later:
        say(f"resuming from step {n}: removing {len(later)} later checkpoint(s) of the abandoned continuation")
        if is_main:
            for p in later:
                shutil.rmtree(p)
    return resume_from


def trim_logs(out: Path, step: int) -> None:
    """Drop metrics.csv rows and samples.log sections after `step` (written before an interruption
    that the resumed run repeats)."""
    csv_path = out / "metrics.csv"
    if csv_path.is_file():
        lines = csv_path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
        csv_path.write_text("".join(keep))
    samples = out / "samples.log"
    if samples.is_file():
        sections = re.split(r"(?m)^(?==== step \d+$)", samples.read_text())
        keep = [s for s in sections if not s.startswith("=== step ") or int(s.split()[2]) <= step]
        samples.write_text("".join(keep))


# ---- saving and restoring ---------------------------------------------------------------------------
def save(acc, model, tokenizer, optimizer, scheduler, state: dict, cfg: TrainConfig) -> Path:
    """Write checkpoints/step-N atomically, then keep only the last `keep_last`. Every process
    calls this (gathering the weights is collective under sharded training); the main one writes."""
    final = Path(cfg.output_dir) / "checkpoints" / f"step-{state['step']:07d}"
    weights = acc.get_state_dict(model)
    if acc.is_main_process:
        with atomic_folder(final) as tmp:
            acc.unwrap_model(model).save_pretrained(tmp, state_dict=weights)   # safetensors + config.json
            tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng_cpu": torch.get_rng_state(),
                        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                       tmp / "trainer_state.pt")            # tensors and numbers only: loads with weights_only
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            (tmp / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        for old in checkpoints(cfg.output_dir)[:-cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def restore(checkpoint: Path, optimizer, scheduler) -> dict:
    """Load optimizer, schedule and RNG state into the live objects; returns trainer_state.json.
    The loaded copy (on CPU, as large as the optimizer state: ~9 GB for the 1.13B) is freed on
    return instead of living for the whole resumed run."""
    saved = torch.load(checkpoint / "trainer_state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_cpu"])
    if saved["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    del saved
    return json.loads((checkpoint / "trainer_state.json").read_text())
