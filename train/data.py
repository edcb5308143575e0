"""Training data: datasets -> token ids -> packed blocks -> memmap cache, with a held-out split.

    texts (load_dataset: Hub name, or local txt/jsonl/json/parquet files or a folder of them)
      -> <s> ids </s> per document (the Nucleus tokenizer; EOS marks every document boundary)
      -> one uint16 token stream per split, cached on disk (tokenised once, ever)
      -> full fixed-length blocks of `seq_len` tokens (no padding; the ragged tail is dropped)

`datasets` loads and streams; this module adds what it lacks for pretraining: validation of
local files with errors naming the file, the on-disk token cache, packing, and a batch order
that is a pure function of (seed, epoch, position) so a resumed run continues exactly where it
stopped without replaying the loader.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TOKENIZE_BATCH = 1000       # documents per tokenizer call (the fast tokenizer parallelises inside)
CACHE_VERSION = 1


class DataError(ValueError):
    """Bad training data: names the file (or dataset) and the column."""


@dataclass(frozen=True)
class DataSpec:
    source: str                          # Hub dataset name, or a local file or folder
    text_field: str = "text"
    split: str = "train"
    config_name: str | None = None       # Hub dataset configuration, if it has several
    validation_split: str | None = None  # a split of the source to hold out, e.g. "validation"
    validation_fraction: float = 0.01    # else: this share of documents, chosen by a fixed hash
    max_documents: int | None = None     # cap, for quick runs
    streaming: bool = False              # stream large Hub datasets instead of downloading all


# ---- reading documents --------------------------------------------------------------------
def _list_files(source: str) -> list[Path]:
    """The local files of `source` ([] for a Hub name), without reading them."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path}: no {', '.join(LOCAL_SUFFIXES)} files in this folder")
        return files
    return []


def local_files(source: str) -> list[Path]:
    """The local files of `source`, checked: known type, not empty, valid UTF-8."""
    files = _list_files(source)
    for f in files:
        if f.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"{f}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
        if f.stat().st_size == 0:
            raise DataError(f"{f}: the file is empty")
        if f.suffix != ".parquet":
            _check_utf8(f)
    return files


def _check_utf8(path: Path) -> None:
    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {offset + e.start}); "
                                "re-encode it, e.g. `iconv -f latin1 -t utf-8`") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text (truncated character at the end)") from None


def _load(spec: DataSpec, split: str):
    from datasets import load_dataset

    files = local_files(spec.source)
    if files:
        kinds = {LOCAL_SUFFIXES[f.suffix] for f in files}
        if len(kinds) > 1:
            raise DataError(f"{spec.source}: mixes {sorted(kinds)} files; keep one kind per folder")
        kind = kinds.pop()
        # a .txt file is one document; other formats carry one document per record
        extra = {"sample_by": "document"} if kind == "text" else {}
        ds = load_dataset(kind, data_files=[str(f) for f in files], split="train", **extra)
        where = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
    else:
        try:
            ds = load_dataset(spec.source, spec.config_name, split=split, streaming=spec.streaming)
        except FileNotFoundError as e:
            raise DataError(f"{spec.source}: no such local path, and the Hub could not provide it ({e})") from None
        where = f"{spec.source} [{split}]"
    columns = ds.column_names or []
    if spec.text_field not in columns:
        raise DataError(f"{where}: no column {spec.text_field!r}; columns are {columns}. "
                        "Set data.text_field in the config.")
    return ds, where


def _documents(spec: DataSpec, split: str):
    """Yield non-empty documents of a split, up to max_documents."""
    ds, where = _load(spec, split)
    n = 0
    for record in ds:
        text = record[spec.text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: column {spec.text_field!r} holds {type(text).__name__}, not text")
        if text.strip():
            yield text
            n += 1
            if spec.max_documents and n >= spec.max_documents:
                return
    if n == 0:
        raise DataError(f"{where}: column {spec.text_field!r} has no non-empty text")


def _is_validation(index: int, fraction: float) -> bool:
    """A fixed, order-independent choice of held-out documents."""
    h = int.from_bytes(hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest(), "little")
    return h / 2**64 < fraction


# ---- tokenising into the cache --------------------------------------------------------------
def cache_key(spec: DataSpec, tokenizer) -> str:
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in _list_files(spec.source)]
    ident = json.dumps([CACHE_VERSION, spec.__dict__, files, len(tokenizer),
                        tokenizer.encode("Nucleus ### Lesson\n 123", add_special_tokens=False)], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def tokenize_to_cache(spec: DataSpec, tokenizer, cache_dir: str | Path) -> Path:
    """Tokenise `spec` once into cache_dir/<key>/{train,val}.bin (uint16) + meta.json.
    Returns the folder. A finished cache is reused; an interrupted one is redone."""
    folder = Path(cache_dir) / cache_key(spec, tokenizer)
    if (folder / "meta.json").is_file():
        return folder
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise DataError(f"vocabulary of {len(tokenizer)} does not fit uint16 token ids")
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    counts = {"train": [0, 0], "val": [0, 0]}   # documents, tokens
    outs = {name: open(tmp / f"{name}.bin", "wb") for name in counts}

    def write(split_name, texts):
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        flat = np.fromiter((t for doc in ids for t in ([bos, *doc, eos] if bos is not None else [*doc, eos])),
                           dtype=np.uint16)
        flat.tofile(outs[split_name])
        counts[split_name][0] += len(texts)
        counts[split_name][1] += flat.size

    try:
        sources = [(spec.split, None)] + ([(spec.validation_split, "val")] if spec.validation_split else [])
        for split, forced in sources:
            batch = {"train": [], "val": []}
            bar = tqdm(desc=f"tokenising {spec.source} [{split}]", unit=" docs", dynamic_ncols=True)
            for i, text in enumerate(_documents(spec, split)):
                target = forced or ("val" if not spec.validation_split and _is_validation(i, spec.validation_fraction)
                                    else "train")
                batch[target].append(text)
                if len(batch[target]) >= TOKENIZE_BATCH:
                    write(target, batch[target])
                    bar.update(len(batch[target]))
                    batch[target] = []
            for target, texts in batch.items():
                if texts:
                    write(target, texts)
                    bar.update(len(texts))
            bar.close()
    finally:
        for fh in outs.values():
            fh.close()
    meta = {"source": spec.source, "text_field": spec.text_field, "documents": counts["train"][0],
            "tokens": counts["train"][1], "val_documents": counts["val"][0], "val_tokens": counts["val"][1],
            "bos": bos, "eos": eos}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():                      # a concurrent run finished first; keep theirs
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, folder)
    return folder


# ---- packed blocks --------------------------------------------------------------------------
class PackedBlocks:
    """Full blocks of `seq_len` tokens over a cached token stream (memory-mapped, never loaded whole)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n_blocks = len(tokens) // seq_len

    @classmethod
    def from_cache(cls, folder: str | Path, split: str, seq_len: int) -> PackedBlocks:
        path = Path(folder) / f"{split}.bin"
        if path.stat().st_size == 0:
            return cls(np.zeros(0, dtype=np.uint16), seq_len)
        return cls(np.memmap(path, dtype=np.uint16, mode="r"), seq_len)

    def __len__(self) -> int:
        return self.n_blocks

    def block(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[i * self.seq_len:(i + 1) * self.seq_len])

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.block(int(i)) for i in indices]).astype(np.int64))  # (B, T)


class RandomBlocks:
    """Random tokens in the shape of PackedBlocks, for benchmarks (no dataset needed)."""

    def __init__(self, n_blocks: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.n_blocks, self.seq_len, self.vocab, self.seed = n_blocks, seq_len, vocab_size, seed

    def __len__(self) -> int:
        return self.n_blocks

    def batch(self, indices) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(indices[0]))
        return torch.randint(0, self.vocab, (len(indices), self.seq_len), generator=g)


class BatchOrder:
    """Which blocks make micro-batch number `k`: a pure function of (seed, epoch, k), so the
    position saved in a checkpoint is all a resumed run needs. Each process takes a strided
    share of every global micro-batch (data parallel)."""

    def __init__(self, n_blocks: int, micro_batch: int, seed: int, rank: int = 0, world: int = 1):
        self.global_batch = micro_batch * world
        if n_blocks < self.global_batch:
            raise DataError(f"only {n_blocks} blocks of data, fewer than one batch of {self.global_batch}; "
                            "add data or lower micro_batch / seq_len")
        self.n_blocks, self.micro_batch, self.seed, self.rank = n_blocks, micro_batch, seed, rank
        self.per_epoch = n_blocks // self.global_batch
        self._perm_epoch, self._perm = -1, None

    def indices(self, k: int) -> np.ndarray:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            self._perm_epoch = epoch
        start = j * self.global_batch + self.rank * self.micro_batch
        return self._perm[start:start + self.micro_batch]

    def epoch_of(self, k: int) -> float:
        return k / self.per_epoch
