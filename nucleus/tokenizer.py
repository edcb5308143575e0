"""The Nucleus tokenizer: Mistral-7B-v0.1's 32k SentencePiece model.

A checkpoint's own tokenizer files win. Without them (offline, or a fresh training run) the
tokenizer is built from the identical copy that the `mistral-common` package ships
(`mistral_common/data/tokenizer.model.v1`).

Why not `LlamaTokenizer(vocab_file=...)`: in transformers 5 that constructor ignores the file
and builds a 3-token vocabulary, and `tokenizer_class: LlamaTokenizer` re-creates the
pre-tokenizer with whitespace handling that differs from SentencePiece. Letting AutoTokenizer
convert the .model file itself (needs `protobuf`) gives ids identical to `sentencepiece`.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")

# Minimal config for the converted tokenizer: add <s> in front of every text, as Mistral does.
_CONFIG = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
           "eos_token": "</s>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False}


def sentencepiece_path() -> Path:
    """Path of the SentencePiece model shipped inside mistral-common."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common has no {path.name} at {path}; "
                                "reinstall it with `pip install -r requirements.txt`")
    return path


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


@functools.lru_cache(maxsize=1)
def _bundled() -> PreTrainedTokenizerBase:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(sentencepiece_path(), Path(tmp) / "tokenizer.model")
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(_CONFIG))
        tok = AutoTokenizer.from_pretrained(tmp)
    if len(tok) != 32000:  # guard against the silent 3-token failure mode described above
        raise RuntimeError(f"tokenizer conversion produced {len(tok)} tokens instead of 32000")
    return tok


def load_tokenizer(folder: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer if `folder` has one, else Mistral's 32k from mistral-common."""
    if folder is not None and has_tokenizer(folder):
        return AutoTokenizer.from_pretrained(folder)
    return _bundled()


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids for a user prompt: <s> + text. Literal "<s>" or "</s>" typed by a user stay text
    (split_special_tokens) so a prompt cannot inject control tokens."""
    return tokenizer(text, split_special_tokens=True).input_ids
