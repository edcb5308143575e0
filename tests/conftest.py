"""Shared fixtures: a tiny random Nucleus-family checkpoint written by the tests themselves.
Nothing here touches the Hub or a GPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # tests never reach for the Hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"


def write_tiny_checkpoint(folder: Path, seed: int = 0) -> Path:
    from nucleus import architecture
    from nucleus.tokenizer import load_tokenizer

    model = architecture.build("tiny", seed=seed)
    model.save_pretrained(folder)          # safetensors by default
    load_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-nucleus"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    import nucleus

    return nucleus.load(tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def long_dir(tmp_path_factory) -> Path:
    """A random Nucleus-family model with an 8,192-token context and more layers than "tiny": slow
    enough that a run of several thousand tokens outlasts any Stop or disconnect a test makes, on
    any machine, without a large model."""
    from nucleus import architecture
    from nucleus.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("long") / "long-context"
    cfg = architecture.config("tiny", hidden_size=128, intermediate_size=448, num_hidden_layers=6,
                              max_position_embeddings=8192, sliding_window=8192)
    architecture.build(cfg, seed=1).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


def write_parrot_checkpoint(folder: Path, prompt: str, text: str) -> Path:
    """A tiny model steered to continue `prompt` with exactly `text`, then </s>: attention and MLP
    outputs are zeroed, so the last hidden state is the current token's embedding, and each
    token's embedding points the output layer at the next token of the chain. The chain's
    tokens must be distinct (a bigram chain cannot branch)."""
    import torch

    from nucleus import architecture
    from nucleus.tokenizer import encode_prompt, load_tokenizer

    tok = load_tokenizer()
    chain = encode_prompt(tok, prompt)[-1:] + tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert len(set(chain)) == len(chain), "the chain's tokens must be distinct"
    model = architecture.build("tiny", seed=0)
    hidden = model.config.hidden_size
    assert len(chain) <= hidden
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        for k, (this, nxt) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[this] = torch.nn.functional.one_hot(torch.tensor(k), hidden).float()
            model.lm_head.weight[nxt] = 100.0 * torch.nn.functional.one_hot(torch.tensor(k), hidden).float()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
