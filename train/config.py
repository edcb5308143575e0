"""TrainConfig: every knob of a training run, read from train/configs/*.yaml with --flag overrides.

One flat dataclass so a YAML file, the command line and the resolved JSON saved beside every
checkpoint all use the same names. Unknown keys are an error, never silently ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    # model: "scratch" builds family member `size`; anything else is a Hub id or folder to start from
    init: str = "scratch"
    size: str = "nucleus-1b"
    # data (see train/data.py)
    dataset: str = "roneneldan/TinyStories"
    text_field: str = "text"
    split: str = "train"
    dataset_config: str | None = None
    validation_split: str | None = None   # a split of the dataset to hold out, else a fraction
    validation_fraction: float = 0.01
    max_documents: int | None = None
    streaming: bool = False
    cache_dir: str = ".cache/nucleus-tokens"
    # one optimizer step = micro_batch x seq_len tokens x accumulation x processes ~= tokens_per_step
    seq_len: int = 2048
    micro_batch: int = 4
    tokens_per_step: int = 131_072
    max_steps: int | None = None          # else derived from epochs
    epochs: float = 1.0
    # optimisation
    lr: float = 3e-4
    min_lr_ratio: float = 0.1             # cosine decays to lr x this
    warmup_steps: int = 100
    weight_decay: float = 0.1             # on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"              # adamw (fused on CUDA) | adamw8bit (bitsandbytes)
    precision: str = "auto"               # auto (bf16 autocast on bf16 GPUs, else fp32) | bf16 | fp16 | fp32
    activation_checkpointing: bool = True
    compile: bool = False
    # bookkeeping
    output_dir: str = "runs/pretrain"
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 2
    sample_presets: list[str] = field(default_factory=lambda: ["story", "recipe"])
    sample_tokens: int = 48
    seed: int = 1234
    peak_tflops: float | None = None      # override the table above (MFU)
    halt_after: int | None = None         # stop after this step as if interrupted (train in sessions)
    resume: str | None = None             # "auto" (latest checkpoint in output_dir) or a checkpoint folder
    benchmark: bool = False               # random tokens; no eval, checkpoints or export
    push_to_hub: str | None = None        # repo id to upload the final export to
    stage: str = "pretrain"               # recorded in the model card

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> TrainConfig:
        import yaml

        values = yaml.safe_load(Path(path).read_text()) if path else {}
        values = {**(values or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path or 'overrides'}: unknown config key {unknown[0]!r}; known keys: {sorted(known)}")
        return cls(**values)


def add_config_flags(parser) -> None:
    """One --flag per TrainConfig field, typed from its default; unset flags keep the YAML value."""
    parser.add_argument("--config", help="YAML file in train/configs/")
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, type=lambda s: s.lower() in {"1", "true", "yes", "on"},
                                default=None, metavar="BOOL")
        elif isinstance(default, list):
            parser.add_argument(flag, dest=f.name, nargs="*", default=None)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if f.name in {"max_steps", "max_documents", "halt_after"}:
                kind = int
            elif f.name == "peak_tflops":
                kind = float
            parser.add_argument(flag, dest=f.name, type=kind, default=None)


def config_from_args(args) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    return TrainConfig.load(args.config, **overrides)
