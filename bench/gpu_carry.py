"""The files a GPU call carries (.carry/, git-ignored), and how the committed nano is scored.

    python bench/gpu_suite.py --prepare-carry      # here, once: needs datasets and mistral-common

.carry/tokens/stage{1,2}/  train.bin, val.bin (uint16), meta.json: the offline corpus (train/corpus.py)
                           tokenised and split as the committed models/nucleus-nano was (see below)
.carry/tokenizer/          the Mistral tokenizer files of models/nucleus-nano
.carry/site/               liger-kernel, installed with --no-deps --target (pure Python + Triton)
.carry/reference.json      the committed nano's held-out perplexity on these splits, measured here
                           (2026-11-27: 103.96 / 163.87 / 342.42 / 965.41, the card's figures exactly)
A device call takes at most 64 MiB: the carry plus the tracked files without models/ must fit.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from train import blocks as B
from train import data as D
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / ".carry"
CARRY_LIMIT = 64 * 2**20                              # what one device call takes along, all in
CARRY_PACKAGES = ["liger-kernel==0.8.5"]              # bitsandbytes' wheel (60+ MB) does not fit
NANO_TOKENIZER = ROOT / "models/nucleus-nano"


# ---- scoring on a held-out split ------------------------------------------------------------------
@torch.no_grad()
def heldout_ppl(path: Path, blocks: B.PackedBlocks, device, batch: int = 16) -> dict:
    """Perplexity over every full block of a held-out split: the weights as stored (bf16), computed in
    fp32, the mean of equal-length blocks' losses (the committed card's method)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    total = 0.0
    for i in range(0, len(blocks), batch):
        x = blocks.batch(range(i, min(i + batch, len(blocks)))).to(device)
        total += model(input_ids=x, labels=x).loss.item() * len(x)
    loss = total / len(blocks)
    del model
    return {"ppl": round(math.exp(loss), 3), "loss": round(loss, 5), "tokens": len(blocks) * blocks.seq_len}


@torch.no_grad()
def passages_ppl(path: Path, device) -> dict:
    """Perplexity on nucleus/quality.py's six passages (a lesson, a recipe, a story... the presets'
    genres, written for the project): what the Space asks of the model, unlike the corpus splits.
    Same method as heldout_ppl (bf16 as stored, fp32 compute), every position of every passage."""
    from transformers import AutoModelForCausalLM

    from nucleus import quality
    from nucleus.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    nll, positions = 0.0, 0
    for ids in quality.passage_ids(load_tokenizer(path), quality.HELD_OUT):
        ids = ids.to(device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        positions += ids.shape[1] - 1
    del model
    return {"ppl": round(math.exp(nll / positions), 3), "loss": round(nll / positions, 5), "tokens": positions}


def committed_reference(tokens: Path, seq_len: int, device) -> dict:
    """Held-out perplexity of the committed nano (final and stage 1) on both splits of `tokens`,
    and on the presets' passages."""
    out = {}
    for name in ("nucleus-nano", "nucleus-nano-stage1"):
        for stage in ("stage1", "stage2"):
            blocks = B.PackedBlocks.from_cache(tokens / stage, "val", seq_len)
            out[f"{name} on {stage}"] = heldout_ppl(ROOT / "models" / name, blocks, device)
        out[f"{name} on passages"] = passages_ppl(ROOT / "models" / name, device)
    return out


# ---- preparing the carried files (here, not on the device) ---------------------------------------
def tree_bytes(paths) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def legacy_is_validation(index: int, fraction: float) -> bool:
    """The held-out rule train/data.py had when models/nucleus-nano was trained (commit 574a3ea): a
    hash of the document's position. data.py now hashes the text, which holds out other documents;
    on that split the committed nano would be scored partly on its own training text."""
    h = int.from_bytes(hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest(), "little")
    return h / 2**64 < fraction


def legacy_split_cache(spec: D.DataSpec, tokenizer, folder: Path) -> dict:
    """train.bin / val.bin / meta.json in data.py's cache format, split by the legacy rule: the
    committed nano's card figures are measured on this val.bin (checked by reference.json)."""
    stats: dict = {}
    docs = list(D._documents(spec, spec.split, stats, D.local_splits(spec.source)))
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, keep in (("train", False), ("val", True)):
        texts = [d for i, d in enumerate(docs) if legacy_is_validation(i, spec.validation_fraction) == keep]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]      # <s> ids </s> per document
        flat = np.fromiter((t for doc in ids for t in (tokenizer.bos_token_id, *doc, tokenizer.eos_token_id)),
                           dtype=np.uint16)
        flat.tofile(folder / f"{name}.bin")
        counts[name] = (len(texts), int(flat.size))
    meta = {"source": Path(spec.source).name, "text_field": spec.text_field, "documents": counts["train"][0],
            "tokens": counts["train"][1], "val_documents": counts["val"][0], "val_tokens": counts["val"][1],
            "held_out": f"held-out set: {spec.validation_fraction:.1%} of the documents by a hash of their position "
                        "(the split of models/nucleus-nano's card)",
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def prepare_carry(corpus: Path, carry: Path, reference: bool) -> dict:
    """.carry/: tokenizer/, tokens/stage{1,2}/ (train.bin, val.bin, meta.json), site/ (liger-kernel),
    reference.json (the committed nano's held-out perplexity on these splits, CPU)."""
    from nucleus.tokenizer import load_tokenizer

    if not (corpus / "stage1").is_dir():
        from train import corpus as C
        C.main(["--out", str(corpus)])
    shutil.rmtree(carry, ignore_errors=True)
    (carry / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(NANO_TOKENIZER / name, carry / "tokenizer" / name)
    tok = load_tokenizer(NANO_TOKENIZER)
    for stage, yaml in (("stage1", "nano-pretrain.yaml"), ("stage2", "nano-finetune.yaml")):
        cfg = TrainConfig.load(ROOT / "train/configs" / yaml)
        spec = D.DataSpec(str(corpus / stage), cfg.text_field, cfg.split, cfg.dataset_config, cfg.validation_split,
                          cfg.validation_fraction, cfg.max_documents, cfg.streaming, cfg.document_separator)
        legacy_split_cache(spec, tok, carry / "tokens" / stage)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(carry / "site"),
                    *CARRY_PACKAGES], check=True)
    if reference:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        ref = committed_reference(carry / "tokens", 512, torch.device("cpu"))
        (carry / "reference.json").write_text(json.dumps(ref, indent=1))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    tracked_bytes = tree_bytes([ROOT / f for f in tracked if f and (ROOT / f).is_file()])
    models = tree_bytes([ROOT / "models"])
    report = {"carry_bytes": tree_bytes([carry]), "tracked_bytes": tracked_bytes, "models_bytes": models,
              "limit_bytes": CARRY_LIMIT}
    report["travels_without_models"] = report["carry_bytes"] + tracked_bytes - models
    report["fits_without_models"] = report["travels_without_models"] <= CARRY_LIMIT
    print(json.dumps(report, indent=1))
    if not report["fits_without_models"]:
        raise SystemExit(f"error: {carry} and the tracked files (models/ aside) exceed 64 MiB")
    return report
