"""The Nucleus architecture: the 1.13B MistralConfig and its smaller family members.

Nucleus-1B-alpha-1 is a plain Mistral (no custom code): hidden 4096, 4 layers, 32 query heads,
8 KV heads (GQA 4:1), SwiGLU MLP 14336, vocab 32000, untied input/output embeddings,
sliding window 4096, RoPE theta 10000. Smaller members keep its proportions where they make
sense (MLP = 3.5 x hidden, 4:1 GQA, 4 layers, same tokenizer) so code paths are identical.
"""
from __future__ import annotations

import torch
from transformers import MistralConfig, MistralForCausalLM

# Token ids of Mistral's 32k SentencePiece vocabulary (<unk>=0, <s>=1, </s>=2).
BOS_ID, EOS_ID = 1, 2
VOCAB_SIZE = 32000

# ---- family ---------------------------------------------------------------------------------
# Every member shares the fields below; each entry overrides only what differs.
_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    tie_word_embeddings=False,
    rope_theta=10000.0,
    hidden_act="silu",
    rms_norm_eps=1e-5,
)

FAMILY: dict[str, dict] = {
    # The published model: exactly 1,134,596,096 parameters.
    "nucleus-1b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                       num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=32768, sliding_window=4096),
    # Nucleus-Nano, the bundled offline default (~19.8M parameters, ~80% of them embeddings),
    # trained at sequence length 512 on CPU, so its context is 512.
    "nano": dict(hidden_size=256, intermediate_size=896, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2,
                 max_position_embeddings=512, sliding_window=512),
    # For tests: builds in milliseconds, ~4.2M parameters (nearly all embeddings).
    "tiny": dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=1,
                 max_position_embeddings=512, sliding_window=512),
}

NUCLEUS_1B_PARAMS = 1_134_596_096


def config(name: str = "nucleus-1b", **overrides) -> MistralConfig:
    """The MistralConfig of family member `name`, with optional field overrides."""
    if name not in FAMILY:
        raise ValueError(f"unknown Nucleus size {name!r}; choose one of {sorted(FAMILY)}")
    return MistralConfig(**{**_COMMON, **FAMILY[name], **overrides})


def build(name_or_config: str | MistralConfig = "nucleus-1b", device: str | torch.device = "cpu",
          seed: int | None = None) -> MistralForCausalLM:
    """A randomly initialised model. device="meta" builds the shape without allocating memory."""
    cfg = config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        return MistralForCausalLM(cfg)


def count_params(cfg: MistralConfig) -> int:
    """Parameter count of a config without allocating weights (built on the meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in MistralForCausalLM(cfg).parameters())
