"""Training data: datasets -> token ids -> a memmap cache per split, with a held-out split.

    texts (load_dataset: Hub name, or local txt/jsonl/json/parquet files or a folder of them,
           split by file names as on the Hub: train*, validation*, test*; train/sources.py)
      -> <s> ids </s> per document (the Nucleus tokenizer; EOS marks every document boundary)
      -> one uint16 token stream per split, cached on disk (tokenised once, ever)
      -> full fixed-length blocks of `seq_len` tokens, in a resumable order (train/blocks.py)

`datasets` loads and streams; this module adds what it lacks for pretraining: errors naming the
file and the column, the held-out choice by a hash of each text, and the on-disk token cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from train.sources import LOCAL_SUFFIXES, DataError, list_files, local_splits

TOKENIZE_BATCH = 1000       # documents per tokenizer call (the fast tokenizer parallelises inside)
CACHE_VERSION = 2           # 2: held-out choice by text hash, local splits, document separator


@dataclass(frozen=True)
class DataSpec:
    source: str                          # Hub dataset name, or a local file or folder
    text_field: str = "text"
    split: str = "train"
    config_name: str | None = None       # Hub dataset configuration, if it has several
    validation_split: str | None = None  # a split of the source to hold out, e.g. "validation"
    validation_fraction: float = 0.01    # else: this share of documents, chosen by a hash of the text
    max_documents: int | None = None     # cap per split, for quick runs
    streaming: bool = False              # stream large Hub datasets instead of downloading all
    document_separator: str | None = None  # one record holds several documents split by this
    data_files: str | None = None        # Hub dataset: only these files (a path or glob inside it)


# ---- reading documents --------------------------------------------------------------------
def _load_datasets():
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError("reading a dataset needs the `datasets` package (pip install datasets); "
                        "a run on an existing token cache does not") from None
    return load_dataset


def _load_local(spec: DataSpec, split: str, splits: dict[str, list[Path]]):
    if split not in splits:
        raise DataError(f"{spec.source}: no local files for split {split!r}; found splits: {sorted(splits)} "
                        "(file or folder names starting train/validation/test name the split)")
    files = splits[split]
    kinds = {LOCAL_SUFFIXES[f.suffix] for f in files}
    if len(kinds) > 1:
        raise DataError(f"{spec.source}: mixes {sorted(kinds)} files; keep one kind per folder")
    kind = kinds.pop()
    where = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    # a .txt file is one record (split into documents by `document_separator`, if set)
    extra = {"sample_by": "document"} if kind == "text" else {}
    try:
        ds = _load_datasets()(kind, data_files=[str(f) for f in files], split="train", **extra)
    except DataError:
        raise
    except Exception as e:      # datasets' DatasetGenerationError wraps the parser's error
        cause = e.__cause__ or e
        raise DataError(f"{where}: could not be read as {kind} ({str(cause).strip().splitlines()[0]})") from None
    return ds, where


def _load_hub(spec: DataSpec, split: str):
    from nucleus.loading import hub_offline, hub_reachable

    where = f"{spec.source} [{split}]"
    if not hub_offline() and not hub_reachable():
        raise DataError(f"{spec.source}: not a local path, and the Hugging Face Hub did not answer; check the "
                        "network, set HF_HUB_OFFLINE=1 to use a copy in the local cache, "
                        "or set dataset to a local folder")
    try:
        files = {"data_files": spec.data_files} if spec.data_files else {}
        return _load_datasets()(spec.source, spec.config_name, split=split, streaming=spec.streaming, **files), where
    except DataError:
        raise
    except ConnectionError:
        raise DataError(f"{spec.source}: not a local path, and not in the local Hugging Face cache "
                        "(HF_HUB_OFFLINE is set); download it once with network access or use a local folder") from None
    except (FileNotFoundError, ValueError) as e:   # DatasetNotFoundError; an unknown split or config
        raise DataError(f"{where}: {str(e).strip().splitlines()[0]}") from None


def load_records(spec: DataSpec, split: str):
    """(the records of one split, a label for messages): local files or the Hub, as for training."""
    splits = local_splits(spec.source) if list_files(spec.source) else None
    return _load_local(spec, split, splits) if splits is not None else _load_hub(spec, split)


def documents(spec: DataSpec, split: str = "train"):
    """The non-empty documents of one split, as training reads them (see _documents)."""
    splits = local_splits(spec.source) if list_files(spec.source) else None
    yield from _documents(spec, split, {}, splits)


def _documents(spec: DataSpec, split: str, stats: dict, splits: dict[str, list[Path]] | None):
    """Yield the non-empty documents of a split (of the local `splits`, else of the Hub dataset), up
    to max_documents. Records with no text (null) are skipped and counted in
    stats["skipped_records"]; a wrong type is an error."""
    ds, where = _load_local(spec, split, splits) if splits is not None else _load_hub(spec, split)
    columns = ds.column_names
    if columns is not None and spec.text_field not in columns:      # None: a stream, checked per record
        raise DataError(f"{where}: no column {spec.text_field!r}; columns are {columns}. "
                        "Set text_field in the config (or --text-field).")
    n = 0
    for record in ds:
        if spec.text_field not in record:
            raise DataError(f"{where}: no column {spec.text_field!r}; columns are {sorted(record)}. "
                            "Set text_field in the config (or --text-field).")
        text = record[spec.text_field]
        if text is None:
            stats["skipped_records"] = stats.get("skipped_records", 0) + 1
            continue
        if not isinstance(text, str):
            raise DataError(f"{where}: column {spec.text_field!r} holds {type(text).__name__}, not text")
        pieces = [p.strip() for p in text.split(spec.document_separator)] if spec.document_separator else [text]
        for piece in pieces:
            if piece.strip():
                yield piece
                n += 1
                if spec.max_documents and n >= spec.max_documents:
                    return
    if n == 0:
        raise DataError(f"{where}: column {spec.text_field!r} has no non-empty text")


def _text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def _is_validation(text: str, fraction: float) -> bool:
    """A fixed choice of held-out documents by their text: order-independent, and a document that
    occurs twice is held out (or trained on) in both places, never split across the two sets."""
    return int.from_bytes(_text_hash(text), "little") / 2**64 < fraction


def held_out_plan(spec: DataSpec, splits: dict[str, list[Path]] | None) -> tuple[str | None, str]:
    """(the split to hold out or None for a hashed fraction, a sentence saying which)."""
    if spec.validation_split:
        if splits is not None:
            if spec.validation_split not in splits:
                return None, (f"{spec.source} has no {spec.validation_split!r} split (found {sorted(splits)}): "
                              f"holding out {spec.validation_fraction:.1%} of the {spec.split!r} documents instead")
        return spec.validation_split, f"held-out set: the {spec.validation_split!r} split of {spec.source}"
    return None, f"held-out set: {spec.validation_fraction:.1%} of the {spec.split!r} documents, chosen by text hash"


# ---- tokenising into the cache --------------------------------------------------------------
def cache_key(spec: DataSpec, tokenizer) -> str:
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in list_files(spec.source)]
    ident = json.dumps([CACHE_VERSION, spec.__dict__, files, len(tokenizer),
                        tokenizer.encode("Nucleus ### Lesson\n 123", add_special_tokens=False)], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


class _CacheWriter:
    """The train.bin and val.bin of a cache being written, which split each document goes to, and
    the counts that end up in meta.json."""

    def __init__(self, tmp: Path, tokenizer, spec: DataSpec, val_split: str | None):
        self.tokenizer, self.spec, self.val_split = tokenizer, spec, val_split
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.counts = {"train": [0, 0], "val": [0, 0]}   # documents, tokens
        self.stats = {"skipped_records": 0, "dropped_in_held_out": 0}
        self.val_hashes: set[bytes] = set()
        self.outs = {name: open(tmp / f"{name}.bin", "wb") for name in self.counts}

    def write(self, split_name: str, texts: list[str]) -> None:
        bos, eos = self.bos, self.eos
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        flat = np.fromiter((t for doc in ids for t in ([bos, *doc, eos] if bos is not None else [*doc, eos])),
                           dtype=np.uint16)
        flat.tofile(self.outs[split_name])
        self.counts[split_name][0] += len(texts)
        self.counts[split_name][1] += flat.size

    def target_of(self, text: str, forced: str | None) -> str | None:
        """Where a document goes: "train", "val", or None (a training document that also occurs in
        the held-out split, dropped)."""
        if forced == "val":
            self.val_hashes.add(_text_hash(text))
            return "val"
        if self.val_split:
            if _text_hash(text) in self.val_hashes:
                self.stats["dropped_in_held_out"] += 1
                return None
            return "train"
        return "val" if _is_validation(text, self.spec.validation_fraction) else "train"

    def close(self) -> None:
        for fh in self.outs.values():
            fh.close()

    def meta(self, held_out: str) -> dict:
        counts, spec = self.counts, self.spec
        return {"source": spec.source, "text_field": spec.text_field, "documents": counts["train"][0],
                "tokens": counts["train"][1], "val_documents": counts["val"][0], "val_tokens": counts["val"][1],
                "held_out": held_out, **self.stats, "bos": self.bos, "eos": self.eos}


def _tokenize_split(spec: DataSpec, split: str, forced: str | None, out: _CacheWriter, splits) -> None:
    """Tokenise one split of the source into `out`, TOKENIZE_BATCH documents per tokenizer call."""
    batch = {"train": [], "val": []}
    bar = tqdm(desc=f"tokenising {spec.source} [{split}]", unit=" docs", dynamic_ncols=True)
    for text in _documents(spec, split, out.stats, splits):
        target = out.target_of(text, forced)
        if target is None:
            continue
        batch[target].append(text)
        if len(batch[target]) >= TOKENIZE_BATCH:
            out.write(target, batch[target])
            bar.update(len(batch[target]))
            batch[target] = []
    for target, texts in batch.items():
        if texts:
            out.write(target, texts)
            bar.update(len(texts))
    bar.close()


def tokenize_to_cache(spec: DataSpec, tokenizer, cache_dir: str | Path, say=print) -> Path:
    """Tokenise `spec` once into cache_dir/<key>/{train,val}.bin (uint16) + meta.json.
    Returns the folder. A finished cache is reused (without importing `datasets`); an
    interrupted one is redone. No held-out document is ever written to train.bin: with a
    held-out split, training documents whose text also occurs there are dropped and counted."""
    folder = Path(cache_dir) / cache_key(spec, tokenizer)
    if (folder / "meta.json").is_file():
        return folder
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise DataError(f"vocabulary of {len(tokenizer)} does not fit uint16 token ids")
    splits = local_splits(spec.source) if list_files(spec.source) else None   # checks every file once
    val_split, held_out = held_out_plan(spec, splits)
    say(held_out)
    tmp = folder.with_name(folder.name + ".tmp")
    made_cache_dir = not Path(cache_dir).exists()
    tmp.mkdir(parents=True, exist_ok=True)
    out = _CacheWriter(tmp, tokenizer, spec, val_split)
    try:   # the held-out split first, so training documents can be checked against it
        for split, forced in ([(val_split, "val")] if val_split else []) + [(spec.split, None)]:
            _tokenize_split(spec, split, forced, out, splits)
    except BaseException:   # a data error (or Ctrl-C) leaves no half-written cache behind
        out.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if made_cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise
    finally:
        out.close()
    if out.stats["skipped_records"]:
        say(f"{spec.source}: skipped {out.stats['skipped_records']} records with no text (null {spec.text_field!r})")
    if out.stats["dropped_in_held_out"]:
        say(f"{spec.source}: dropped {out.stats['dropped_in_held_out']} training documents that also occur "
            f"in the held-out split")
    (tmp / "meta.json").write_text(json.dumps(out.meta(held_out), indent=1))
    if folder.exists():                      # a concurrent run finished first; keep theirs
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, folder)
    return folder
