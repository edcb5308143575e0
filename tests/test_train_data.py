"""Training data: the held-out set is never trained on, for every local layout and for Hub splits;
document separators; records without text; errors that name the file and the key."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from train import data as D

WORDS = "the cat sat on a mat and the dog ran to the park with a red ball while birds sang".split()


@pytest.fixture(scope="module")
def tok():
    from nucleus.tokenizer import load_tokenizer
    return load_tokenizer()


def story(i: int, words: int = 12) -> str:
    """A distinct document: its number spelled into the text, so every document is unique."""
    rng = np.random.default_rng(i)
    return f"Story {i}: " + " ".join(rng.choice(WORDS, words)) + "."


def documents(cache, tok, split: str) -> list[str]:
    """The documents of a cached split, decoded back to text (<s> doc </s> each)."""
    stream = np.fromfile(cache / f"{split}.bin", dtype=np.uint16)
    out, doc = [], []
    for t in stream.tolist():
        if t == tok.bos_token_id:
            doc = []
        elif t == tok.eos_token_id:
            out.append(tok.decode(doc))
        else:
            doc.append(t)
    return out


def cache_of(tmp_path, tok, source, **kw):
    return D.tokenize_to_cache(D.DataSpec(str(source), **kw), tok, tmp_path / "cache", say=lambda *a: None)


def write_jsonl(path, texts, field="text"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts))
    return path


# ---- the held-out set is never trained on -------------------------------------------------------
def test_hashed_fraction_is_disjoint_even_for_repeated_documents(tmp_path, tok):
    texts = [story(i) for i in range(300)]
    texts += texts[:100]                                # duplicates: both copies must land on one side
    cache = cache_of(tmp_path, tok, write_jsonl(tmp_path / "docs.jsonl", texts), validation_fraction=0.2)
    train, val = documents(cache, tok, "train"), documents(cache, tok, "val")
    assert len(train) + len(val) == 400 and 30 <= len(set(val)) <= 90
    assert not set(train) & set(val)


def test_hub_layout_folder_uses_its_splits_and_never_merges_validation(tmp_path, tok):
    """data/train-*.jsonl + data/validation-*.jsonl: train on train, hold out validation (was: merged)."""
    folder = tmp_path / "hf"
    write_jsonl(folder / "data" / "train-00000-of-00001.jsonl", [story(i) for i in range(60)])
    write_jsonl(folder / "data" / "validation-00000-of-00001.jsonl", [story(i) for i in range(1000, 1020)])
    write_jsonl(folder / "data" / "test-00000-of-00001.jsonl", [story(i) for i in range(2000, 2010)])
    cache = cache_of(tmp_path, tok, folder, validation_split="validation")
    train, val = documents(cache, tok, "train"), documents(cache, tok, "val")
    assert sorted(val) == sorted(story(i) for i in range(1000, 1020))
    assert sorted(train) == sorted(story(i) for i in range(60))          # no validation or test document
    # without validation_split: a hashed share of the train split; the other splits stay out
    cache = cache_of(tmp_path, tok, folder, validation_fraction=0.25)
    train, val = documents(cache, tok, "train"), documents(cache, tok, "val")
    assert sorted(train + val) == sorted(story(i) for i in range(60)) and val and not set(train) & set(val)


def test_validation_split_missing_locally_falls_back_to_a_disjoint_fraction(tmp_path, tok):
    """The 3090 configs say validation_split: validation; --dataset my_folder/ has no such split. The old
    code then read the same files twice: held-out == training (3,150 = 3,150 documents)."""
    folder = tmp_path / "mine"
    for i in range(50):
        (folder / f"doc{i:03d}.txt").parent.mkdir(exist_ok=True)
        (folder / f"doc{i:03d}.txt").write_text(story(i))
    said = []
    cache = D.tokenize_to_cache(D.DataSpec(str(folder), validation_split="validation", validation_fraction=0.2),
                                tok, tmp_path / "cache", say=said.append)
    train, val = documents(cache, tok, "train"), documents(cache, tok, "val")
    assert len(train) + len(val) == 50 and val and not set(train) & set(val)
    assert any("no 'validation' split" in s and "20.0%" in s for s in said)


def test_hub_splits_are_disjoint_and_overlap_is_dropped_from_training(tmp_path, tok, monkeypatch):
    """A Hub dataset's validation split is held out whole; a training document that also occurs in it
    (some datasets repeat texts across splits) is dropped from training and counted."""
    from datasets import Dataset
    splits = {"train": [story(i) for i in range(40)] + [story(1003)],
              "validation": [story(i) for i in range(1000, 1010)]}
    monkeypatch.setattr(D, "_load_datasets", lambda: lambda name, config, split, streaming: Dataset.from_dict(
        {"text": splits[split]}))
    cache = cache_of(tmp_path, tok, "someone/stories", validation_split="validation")
    train, val = documents(cache, tok, "train"), documents(cache, tok, "val")
    assert sorted(val) == sorted(splits["validation"]) and len(train) == 40 and not set(train) & set(val)
    assert json.loads((cache / "meta.json").read_text())["dropped_in_held_out"] == 1


# ---- TinyStories' .txt files, nulls, empty splits -------------------------------------------------
def test_document_separator_splits_tinystories_txt(tmp_path, tok):
    text = "\n<|endoftext|>\n".join(story(i) for i in range(30)) + "\n<|endoftext|>\n"
    f = tmp_path / "TinyStories-train.txt"
    f.write_text(text)
    cache = cache_of(tmp_path, tok, f, document_separator="<|endoftext|>", validation_fraction=0.0)
    docs = documents(cache, tok, "train")
    assert docs == [story(i) for i in range(30)]                          # not one document with separators
    assert not any("endoftext" in d for d in docs)


def test_tinystories_txt_pair_gives_train_and_validation(tmp_path, tok):
    folder = tmp_path / "ts"
    folder.mkdir()
    (folder / "TinyStories-train.txt").write_text("<|endoftext|>".join(story(i) for i in range(20)))
    (folder / "TinyStories-valid.txt").write_text("<|endoftext|>".join(story(i) for i in range(500, 505)))
    cache = cache_of(tmp_path, tok, folder, validation_split="validation", document_separator="<|endoftext|>")
    assert sorted(documents(cache, tok, "val")) == sorted(story(i) for i in range(500, 505))
    assert sorted(documents(cache, tok, "train")) == sorted(story(i) for i in range(20))


def test_null_text_is_skipped_and_counted(tmp_path, tok):
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"text": None if i % 10 == 0 else story(i)}) + "\n" for i in range(30)))
    said = []
    cache = D.tokenize_to_cache(D.DataSpec(str(f), validation_fraction=0.0), tok, tmp_path / "cache", say=said.append)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["documents"] == 27 and meta["skipped_records"] == 3
    assert any("skipped 3 records with no text" in s for s in said)


# ---- errors: one sentence naming the file and what is allowed -----------------------------------
def test_bad_data_errors_are_one_clear_sentence(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    with pytest.raises(D.DataError, match=r"empty\.parquet: the Parquet file has no rows"):
        cache_of(tmp_path, tok, empty)
    rows = write_jsonl(tmp_path / "rows.jsonl", ["hi"], field="content")
    with pytest.raises(D.DataError, match=r"no column 'text'.*Set text_field in the config \(or --text-field\)"):
        cache_of(tmp_path, tok, rows)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": unquoted}\n')
    with pytest.raises(D.DataError, match=r"broken\.jsonl: could not be read as json"):
        cache_of(tmp_path, tok, broken)
    assert not (tmp_path / "cache").exists()           # a failed tokenising leaves no half-written cache
    (tmp_path / "cache").mkdir()
    with pytest.raises(D.DataError):
        cache_of(tmp_path, tok, broken)
    assert list((tmp_path / "cache").iterdir()) == []   # a cache folder that was there stays, empty
    folder = tmp_path / "hf"
    write_jsonl(folder / "train.jsonl", ["a b c"])
    with pytest.raises(D.DataError, match=r"no local files for split 'training'; found splits: \['train'\]"):
        cache_of(tmp_path, tok, folder, split="training")
    write_jsonl(folder / "extra.jsonl", ["d e f"])          # in no split, beside train.jsonl: not dropped silently
    with pytest.raises(D.DataError, match=r"hf: extra\.jsonl belongs to no split, while other files do"):
        cache_of(tmp_path, tok, folder)


def test_unreachable_hub_fails_fast_with_a_sentence(tmp_path, tok, monkeypatch):
    """Was a raw ConnectionError after ~25 s of retries."""
    from huggingface_hub import constants

    from nucleus import loading
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")    # nothing listens on port 9
    loading.hub_reachable.cache_clear()
    try:
        t = time.perf_counter()
        with pytest.raises(D.DataError, match=r"someone/stories: not a local path, and the Hugging Face Hub did "
                                              r"not answer.*HF_HUB_OFFLINE=1"):
            cache_of(tmp_path, tok, "someone/stories")
        assert time.perf_counter() - t < 5
    finally:
        loading.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                            # offline and not cached
    with pytest.raises(D.DataError, match=r"not in the local Hugging Face cache \(HF_HUB_OFFLINE is set\)"):
        cache_of(tmp_path, tok, "someone/not-cached-stories")


def test_existing_token_cache_needs_no_datasets_package(tmp_path, tok):
    """The GPU image may lack `datasets`: a run on an already tokenised cache must not import it."""
    f = write_jsonl(tmp_path / "docs.jsonl", [story(i) for i in range(20)])
    first = cache_of(tmp_path, tok, f)
    code = f"""
import sys
sys.modules["datasets"] = None                       # any `import datasets` now fails
from nucleus.tokenizer import load_tokenizer
from train import blocks as B, data as D
folder = D.tokenize_to_cache(D.DataSpec({str(f)!r}), load_tokenizer(), {str(tmp_path / 'cache')!r})
assert str(folder) == {str(first)!r}, folder
print(len(B.PackedBlocks.from_cache(folder, "train", 16)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 0


def test_dataset_files_choose_files_of_a_hub_dataset(tmp_path, tok, monkeypatch):
    """dataset_files (the OpenOrca GPT-4 file, the Python folder of the-stack-smol) reaches load_dataset
    as data_files; without it nothing is passed."""
    from datasets import Dataset
    asked = []

    def fake(name, config, split, streaming, **kw):
        asked.append(kw)
        return Dataset.from_dict({"text": [story(i) for i in range(20)]})
    monkeypatch.setattr(D, "_load_datasets", lambda: fake)
    cache_of(tmp_path, tok, "someone/code", data_files="data/python/*", validation_fraction=0.0)
    cache_of(tmp_path / "b", tok, "someone/code", validation_fraction=0.0)
    assert asked == [{"data_files": "data/python/*"}, {}]
