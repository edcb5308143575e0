"""The model a training run starts from: scratch, a starting model (`init`) or a checkpoint, its
tokenizer, and the training switches put on it (Liger kernels, activation checkpointing).
train/engine.py calls these before the first step; a wrong `init`, tokenizer or Liger setting
stops the run with one sentence (ConfigError) before anything is tokenised or built."""
from __future__ import annotations

from pathlib import Path

import torch

from nucleus import architecture
from nucleus.loading import bundled_path, is_hub_id, load
from nucleus.tokenizer import has_tokenizer, load_tokenizer

from train.config import ConfigError, TrainConfig


def init_folder(cfg: TrainConfig) -> Path | None:
    """The local folder `init` names (models/... from any working folder), or None (scratch, Hub id)."""
    if cfg.init == "scratch":
        return None
    local = bundled_path(cfg.init) or Path(cfg.init)
    return local if local.is_dir() else None


def check_init(cfg: TrainConfig) -> None:
    """A starting model that is not there stops the run in one sentence, before any tokenising
    (a resumed run starts from its checkpoint instead)."""
    if cfg.init == "scratch" or cfg.resume or is_hub_id(cfg.init):
        return
    folder = init_folder(cfg)
    if folder is None:
        raise ConfigError(f"init: there is no folder {cfg.init} (and it is not a Hub id); run the stage before "
                          "this one first, or point --init at its OUTPUT_DIR/final")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"init: {cfg.init} holds no model (no config.json); point --init at a model folder, "
                          "such as a run's OUTPUT_DIR/final")


def build_model(cfg: TrainConfig, resume_from: Path | None):
    """(model, tokenizer) from a checkpoint, a starting model, or scratch; with the training switches."""
    start_from = resume_from or (None if cfg.init == "scratch" else init_folder(cfg) or cfg.init)
    if start_from:
        lm = load(start_from, device="cpu", dtype=torch.float32, quantize="none")
        model, tokenizer = lm.model, lm.tokenizer
    else:
        model, tokenizer = architecture.build(cfg.size, seed=cfg.seed), scratch_tokenizer(cfg)
    if start_from:
        cfg.size = family_size(model.config)           # recorded: the default size means nothing here
    if cfg.seq_len > model.config.max_position_embeddings:
        raise ConfigError(f"seq_len {cfg.seq_len} exceeds the model's context ({model.config.max_position_embeddings})")
    model.config.use_cache = False
    if cfg.liger:
        apply_liger(model)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    return model, tokenizer


def scratch_tokenizer(cfg: TrainConfig):
    """The tokenizer of a run that starts from no model folder: `cfg.tokenizer`'s, else mistral-common's."""
    if cfg.tokenizer is None:
        return load_tokenizer()
    if not has_tokenizer(cfg.tokenizer):
        raise ConfigError(f"tokenizer: {cfg.tokenizer} holds no tokenizer.json or tokenizer.model")
    return load_tokenizer(cfg.tokenizer)


def check_liger(cfg: TrainConfig) -> None:
    """`liger: true` (the 3090 configs) needs a CUDA GPU and liger-kernel: say so before anything is
    tokenised or written, with the way out."""
    if not cfg.liger:
        return
    if not torch.cuda.is_available():
        raise ConfigError("liger: true runs Triton kernels on a CUDA GPU and this machine has none; "
                          "pass --liger false")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"liger: true needs liger-kernel (pip install liger-kernel), or pass --liger false: {e}") \
            from None


def apply_liger(model) -> None:
    """Liger's Triton kernels on this one model: fused linear cross-entropy (the (B, T, vocab) logits
    are never materialised in training), RMSNorm and SwiGLU. Liger patches modeling_mistral's
    classes (and RoPE) module-wide, which would change every Mistral built later in the process (a
    benchmark's baseline too): the module's names are restored, RoPE is left as it is."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_mistral
    except ImportError as e:                            # no package, or no triton (CPU builds of torch)
        why = f"liger: true needs liger-kernel and triton on CUDA (pip install liger-kernel), or --liger false: {e}"
        raise ConfigError(why) from None
    from transformers.models.mistral import modeling_mistral as mm

    names = ("MistralRMSNorm", "MistralMLP", "apply_rotary_pos_emb", "CrossEntropyLoss")
    saved = {n: getattr(mm, n) for n in names if hasattr(mm, n)}
    try:
        apply_liger_kernel_to_mistral(rope=False, cross_entropy=False, fused_linear_cross_entropy=True,
                                      rms_norm=True, swiglu=True, model=model)
    finally:
        for n, v in saved.items():
            setattr(mm, n, v)
    # The fused loss computes the head's gradient inside its forward (addmm with out_dtype), which
    # torch.compile cannot trace (torch 2.11, liger 0.8.5: "Dynamo failed to run FX node with fake
    # tensors", seen on an H200); it runs outside the compiled graph, as the Triton kernel it is.
    from liger_kernel.transformers.model import mistral as liger_mistral
    loss = liger_mistral.LigerForCausalLMLoss
    if not getattr(loss, "_nucleus_eager", False):
        loss = torch.compiler.disable(loss)
        loss._nucleus_eager = True
        liger_mistral.LigerForCausalLMLoss = loss


def family_size(model_cfg) -> str:
    """The family member (nucleus/architecture.py) a loaded model's shape matches, else "custom"."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    for name, shape in architecture.FAMILY.items():
        if all(getattr(model_cfg, k) == shape[k] for k in keys):
            return name
    return "custom"


def enable_activation_checkpointing(model) -> None:
    """transformers >= 5.23 names it activation_checkpointing_enable; 5.17-5.22 (the GPU image)
    only have gradient_checkpointing_enable, which 5.23+ keeps as a deprecated alias."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
