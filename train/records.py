"""What a run writes to OUTPUT_DIR besides checkpoints: metrics.csv, TensorBoard, samples.log,
loss_curve.png and the final export; and NoRecords, the null object benchmarks pass instead.

Only the main process writes; every method is safe to call on every process.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from nucleus.backend import generate
from nucleus.local import LoadedModel
from nucleus.presets import load_presets

from train import checkpoint
from train.export import export, push

COLUMNS = ("step", "loss", "lr", "tok_per_s", "mfu", "val_loss", "val_ppl", "tokens_seen", "elapsed_s")


class _NullWriter:
    """TensorBoard stand-in when tensorboard is not installed."""

    def add_scalar(self, *args, **kwargs):
        pass

    def close(self):
        pass


def tensorboard(folder: Path, purge_step: int | None):
    """A SummaryWriter; `purge_step` drops events from that step on (those of an interrupted run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return _NullWriter()
    return SummaryWriter(str(folder), purge_step=purge_step)


class NoRecords:
    """Writes nothing, saves nothing (benchmarks): the engine's loop stays free of `if` branches."""

    def start(self, cfg, is_main: bool, say) -> Path | None:
        return None

    def open(self, start_step: int) -> None:
        pass

    def row(self, **values) -> None:
        pass

    def scalar(self, name: str, value: float, step: int) -> None:
        pass

    def samples(self, model, tokenizer, step: int, echo) -> None:
        pass

    def save(self, acc, model, tokenizer, optimizer, scheduler, state: dict) -> None:
        pass

    def finish(self, model, tokenizer, summary: dict) -> str | None:
        return None

    def close(self) -> None:
        pass


class RunRecords(NoRecords):
    def __init__(self, cfg, is_main: bool):
        self.cfg, self.is_main, self.out = cfg, is_main, Path(cfg.output_dir)
        self.writer = _NullWriter()

    def start(self, cfg, is_main: bool, say) -> Path | None:
        return checkpoint.start(cfg, is_main, say)

    def open(self, start_step: int) -> None:
        """Called once the start step is known: fresh files, or the old ones trimmed to it."""
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(dataclasses.asdict(self.cfg), indent=1))
        if start_step == 0 or not (self.out / "metrics.csv").is_file():
            (self.out / "metrics.csv").write_text(",".join(COLUMNS) + "\n")
            (self.out / "samples.log").unlink(missing_ok=True)
        else:
            checkpoint.trim_logs(self.out, start_step)
        self.writer = tensorboard(self.out / "tensorboard", purge_step=start_step + 1 if start_step else None)

    def row(self, **values) -> None:
        if self.is_main:
            with open(self.out / "metrics.csv", "a", newline="") as fh:
                csv.writer(fh).writerow([values.get(k, "") for k in COLUMNS])

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def samples(self, model, tokenizer, step: int, echo) -> None:
        if self.is_main:
            write_samples(model, tokenizer, self.cfg, step, self.out, echo)
            plot_losses(self.out / "metrics.csv", self.out / "loss_curve.png")

    def save(self, acc, model, tokenizer, optimizer, scheduler, state: dict) -> None:
        checkpoint.save(acc, model, tokenizer, optimizer, scheduler, state, self.cfg)

    def finish(self, model, tokenizer, summary: dict) -> str | None:
        if not self.is_main:
            return None
        folder = export(model, tokenizer, self.out / "final", self.cfg, summary)
        if self.cfg.push_to_hub:
            push(folder, self.cfg.push_to_hub)
        return str(folder)

    def close(self) -> None:
        self.writer.close()


# ---- samples and the loss curve ------------------------------------------------------------------
def write_samples(model, tokenizer, cfg, step: int, out: Path, echo) -> None:
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
            if p.kind == "chat":        # through the chat template (the instruct stage has one)
                if not lm.supports.chat:
                    continue
                prompt = lm.chat_prompt(p.messages(), settings.max_new_tokens).text
                text = list(lm.stream_chat(p.messages(), settings))[-1].text
            else:
                prompt, text = p.prompt, generate(lm, p.prompt, settings).text
            lines.append(f"--- {name}: {prompt + text!r}")
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

    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
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
