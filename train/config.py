"""TrainConfig: every knob of a training run, read from train/configs/*.yaml with --flag overrides.

One flat dataclass so a YAML file, the command line and the resolved JSON saved beside every
checkpoint all use the same names. Unknown keys, values of the wrong type and values outside
the allowed set are errors naming the file, the key and what is allowed; nothing is coerced
silently (`flase` is not False, `3e-4` written as a YAML string is not a number).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adamw8bit")
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A bad config value: names the file (or flag), the key and what is allowed."""


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
    dataset_files: str | None = None      # Hub dataset: only these files (path or glob inside it)
    validation_split: str | None = None   # a split of the dataset to hold out, else a fraction
    validation_fraction: float = 0.01     # 0 <= f < 1; chosen by a hash of each document's text
    document_separator: str | None = None  # split texts on this (TinyStories' .txt: "<|endoftext|>")
    max_documents: int | None = None
    streaming: bool = False
    # instruct stage only: the record's fields (OpenOrca's names by default; system may be absent)
    system_field: str = "system_prompt"
    question_field: str = "question"
    response_field: str = "response"
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
    grad_clip: float = 1.0                # 0 = no clipping
    optimizer: str = "adamw"              # adamw (fused on CUDA) | adamw8bit (bitsandbytes)
    precision: str = "auto"               # auto (bf16 autocast on bf16 GPUs, else fp32) | bf16 | fp16 | fp32
    activation_checkpointing: bool = True
    compile: bool = False                 # torch.compile the model (CUDA: fuses pointwise ops; slow first step)
    liger: bool = False                   # Liger kernels: fused linear cross-entropy, RMSNorm, SwiGLU (CUDA +
                                          # `pip install liger-kernel`); the logits are never materialised
    tokenizer: str | None = None          # folder with tokenizer files for a scratch run (default:
                                          # mistral-common's copy; a starting model's own always wins)
    # bookkeeping
    output_dir: str = "runs/pretrain"
    overwrite: bool = False               # delete a previous run in output_dir (else refused, or --resume)
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 2
    sample_presets: list[str] = field(default_factory=lambda: ["story", "recipe"])
    sample_tokens: int = 48
    seed: int = 1234
    peak_tflops: float | None = None      # override the table in engine.py (MFU)
    halt_after: int | None = None         # stop after this step as if interrupted (train in sessions)
    resume: str | None = None             # "auto" (latest checkpoint in output_dir) or a checkpoint folder
    push_to_hub: str | None = None        # repo id to upload the final export to
    stage: str = "pretrain"               # recorded in the model card

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "config") -> None:
        """Types first (from the annotations), then allowed values; the first problem is raised."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(where, f.name, getattr(self, f.name), hints[f.name]))
        rules = [
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("validation_fraction", 0 <= self.validation_fraction < 1, "0 <= validation_fraction < 1"),
            ("validation_split", self.validation_split != self.split,
             "a split other than `split` (the held-out set must not be the training set)"),
            ("document_separator", self.document_separator != "", "a non-empty string or null"),
            ("keep_last", self.keep_last >= 1, "an integer >= 1"),
            ("epochs", self.epochs > 0, "a number > 0"),
            ("lr", self.lr > 0, "a number > 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "0 <= min_lr_ratio <= 1"),
            ("grad_clip", self.grad_clip >= 0, "a number >= 0 (0 = off)"),
            ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0"),
        ]
        for key in ("seq_len", "micro_batch", "tokens_per_step", "log_every", "eval_every", "eval_batches",
                    "save_every", "sample_tokens"):
            rules.append((key, getattr(self, key) >= 1, "an integer >= 1"))
        for key in ("max_steps", "max_documents", "halt_after"):
            rules.append((key, getattr(self, key) is None or getattr(self, key) >= 1, "an integer >= 1 or null"))
        for key, ok, allowed in rules:
            if not ok:
                raise ConfigError(f"{where}: {key} is {getattr(self, key)!r}; allowed: {allowed}")

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides) -> TrainConfig:
        import yaml

        where = str(path) if path else "overrides"
        try:
            values = yaml.safe_load(Path(path).read_text()) if path else {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{path}: expected `key: value` lines, found a {type(values).__name__}")
        values = {**(values or {}), **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown config key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
        cfg = cls.__new__(cls)                      # validate with the file's name in the message
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(cfg, f.name, values.get(f.name, default))
        cfg.validate(where)
        return cfg


def _base(hint):
    """The type under an optional: `int | None` -> int; `list[str]` stays itself."""
    if typing.get_origin(hint) is list:
        return hint
    return next((a for a in typing.get_args(hint) if a is not type(None)), hint)


def _check_type(where: str, key: str, value, hint):
    """`value` if it fits `hint` (int is accepted for float); else a ConfigError naming the key."""
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ConfigError(f"{where}: {key} must be set (null is not allowed)")
    base = _base(hint)
    if typing.get_origin(base) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{where}: {key} is {value!r}; allowed: a list of names, e.g. [story, recipe]")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} is {value!r}; allowed: true or false")
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    hint_name = {int: "an integer", float: "a number (write 3.0e-4, not 3e-4, in YAML)", str: "text"}[base]
    raise ConfigError(f"{where}: {key} is {value!r} ({type(value).__name__}); allowed: {hint_name}")


# One help line per key, shown by `--help` of every stage script.
HELP: dict[str, str] = {
    "init": "'scratch' builds a new model of --size; else a model folder or Hub id to start from",
    "size": "family member built from scratch: nucleus-1b, nano or tiny (ignored with --init)",
    "dataset": "Hub dataset id, or a local .txt/.jsonl/.json/.parquet file or a folder of them",
    "text_field": "the column holding the text",
    "split": "the split to train on",
    "dataset_config": "the dataset's configuration name, when it has several (e.g. 20231101.fa)",
    "dataset_files": "a Hub dataset's files to read, a path or glob inside it (e.g. 1M-GPT4-Augmented.parquet)",
    "validation_split": "a split of the dataset to hold out; else --validation-fraction of the documents",
    "validation_fraction": "share of documents held out (0 <= f < 1), chosen by a hash of each text",
    "document_separator": "split each text on this string (TinyStories' .txt files: <|endoftext|>)",
    "max_documents": "use only the first N documents (a quick run)",
    "streaming": "read a Hub dataset as a stream instead of downloading it whole",
    "system_field": "instruct: the field holding the system prompt (may be absent or empty)",
    "question_field": "instruct: the field holding the user's message",
    "response_field": "instruct: the field holding the reply the loss is computed on",
    "cache_dir": "where tokenised datasets are kept and reused",
    "seq_len": "tokens per training sequence",
    "micro_batch": "sequences per forward pass on each process",
    "tokens_per_step": "tokens per optimizer step; gradient accumulation is derived from it",
    "max_steps": "optimizer steps to run; else derived from --epochs",
    "epochs": "passes over the training set (when --max-steps is not set)",
    "lr": "peak learning rate",
    "min_lr_ratio": "the cosine schedule decays to lr x this",
    "warmup_steps": "linear warm-up steps",
    "weight_decay": "AdamW weight decay, on matrices only (not norms)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the gradient norm to this; 0 = no clipping",
    "optimizer": "adamw (fused on CUDA) or adamw8bit (bitsandbytes)",
    "precision": "auto (bf16 autocast on bf16 GPUs, else fp32), bf16, fp16 or fp32",
    "activation_checkpointing": "recompute activations in the backward pass: less memory, about 30%% more time",
    "compile": "torch.compile the model (CUDA: fuses pointwise ops; the first step is slow)",
    "liger": "Liger kernels (CUDA, pip install liger-kernel): fused cross-entropy, RMSNorm, SwiGLU",
    "tokenizer": "folder with tokenizer files for a scratch run (default: mistral-common's copy)",
    "output_dir": "the run's folder: checkpoints, metrics, samples, and final/ at the end",
    "overwrite": "delete a previous run in --output-dir (else refused, or continue it with --resume)",
    "log_every": "log loss and throughput every N steps",
    "eval_every": "held-out loss and samples every N steps",
    "eval_batches": "batches of the held-out set per evaluation",
    "save_every": "save a checkpoint every N steps",
    "keep_last": "checkpoints to keep (older ones are deleted)",
    "sample_presets": "presets whose prompts are continued at each evaluation (samples.log)",
    "sample_tokens": "tokens per sample",
    "seed": "seed of the initialisation, data order and samples",
    "peak_tflops": "the GPU's peak TFLOP/s for the MFU figure (default: a table of known GPUs)",
    "halt_after": "stop after this step as if interrupted (train in sessions; continue with --resume auto)",
    "resume": "'auto' (the latest checkpoint in --output-dir) or a checkpoint folder",
    "push_to_hub": "a Hub repository id to upload the final model to",
    "stage": "the stage recorded in the model card (set by the script)",
}


# ---- the command line ----------------------------------------------------------------------------
def parse_bool(text: str) -> bool:
    """true/yes/on/1 or false/no/off/0; anything else (e.g. `flase`) is refused."""
    if text.strip().lower() in TRUE:
        return True
    if text.strip().lower() in FALSE:
        return False
    import argparse
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; allowed: true or false")


def add_config_flags(parser) -> None:
    """One --flag per TrainConfig field, typed from its annotation; unset flags keep the YAML value."""
    parser.add_argument("--config", help="a YAML file of these keys (train/configs/); flags given beside it win")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "stage":                             # each script sets its own stage
            continue
        base = _base(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_line = HELP[f.name]
        if base is bool:
            parser.add_argument(flag, dest=f.name, type=parse_bool, nargs="?", const=True, default=None,
                                metavar="BOOL", help=help_line)           # `--overwrite` alone means true
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, dest=f.name, nargs="*", default=None, help=help_line)
        else:
            parser.add_argument(flag, dest=f.name, type=base, default=None, help=help_line)


def config_from_args(args) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    return TrainConfig.load(args.config, **overrides)
