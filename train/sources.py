"""Local training data: which files a source names, checked before anything reads them (type,
size, UTF-8, Parquet rows), and which split each file belongs to, by the Hub's naming rules.
train/data.py reads them (and Hub datasets) into the token cache."""
from __future__ import annotations

import codecs
from pathlib import Path

LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """Bad training data: names the file (or dataset) and the column."""


def list_files(source: str) -> list[Path]:
    """The local files of `source` ([] for a Hub name), without reading them (no `datasets` needed)."""
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
    """The local files of `source`, checked: known type, not empty, valid UTF-8, rows in Parquet."""
    files = list_files(source)
    for f in files:
        if f.suffix not in LOCAL_SUFFIXES:
            raise DataError(f"{f}: unsupported file type; use one of {', '.join(LOCAL_SUFFIXES)}")
        if f.stat().st_size == 0:
            raise DataError(f"{f}: the file is empty")
        if f.suffix == ".parquet":
            _check_parquet(f)
        else:
            _check_utf8(f)
    return files


def local_splits(source: str) -> dict[str, list[Path]]:
    """Local files by split, by `datasets`' own naming rules (train*, validation*/valid*/dev*/val*,
    test*, in file or folder names: the Hub layout). A single file, or a folder whose names carry
    no split, is all "train"."""
    files = local_files(source)
    path = Path(source).expanduser()
    if path.is_file():
        return {"train": files}
    from datasets.data_files import DataFilesDict, get_data_patterns

    resolved = DataFilesDict.from_patterns(get_data_patterns(str(path.resolve())), base_path=str(path.resolve()))
    wanted = {f.resolve() for f in files}
    splits = {str(name): sorted(Path(f) for f in found if Path(f).resolve() in wanted)
              for name, found in resolved.items()}
    stray = sorted(wanted - {f.resolve() for found in splits.values() for f in found})
    if stray:                                       # never drop a file silently
        raise DataError(f"{path}: {stray[0].relative_to(path.resolve())} belongs to no split, while other files do "
                        "(names with train/validation/test choose the split); rename or move it")
    return {name: found for name, found in splits.items() if found}


def _check_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as e:      # pyarrow's ArrowInvalid and friends
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if rows == 0:
        raise DataError(f"{path}: the Parquet file has no rows")


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
