"""The training kit on CPU: tiny models, a few KB of text written by the test, a few steps."""
import csv
import json
import math
import random

import numpy as np
import pytest

import nucleus
from train import blocks as B
from train import data as D
from train.engine import TrainConfig, run

WORDS = ("the cat sat on a mat and the dog ran to the park with a red ball while birds sang in tall "
         "green trees near the little house by the river").split()


def write_corpus(folder, docs=40, words=250, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        (folder / f"doc{i:03d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words)) + ".\n")
    return folder


def tiny_config(tmp_path, corpus, **kw) -> TrainConfig:
    base = dict(init="scratch", size="tiny", dataset=str(corpus), seq_len=64, micro_batch=4,
                tokens_per_step=512, max_steps=16, warmup_steps=2, lr=3e-3, log_every=1, eval_every=8,
                eval_batches=4, save_every=4, keep_last=2, precision="fp32", validation_fraction=0.1,
                output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), sample_tokens=8,
                sample_presets=["story"])
    return TrainConfig(**{**base, **kw})


def train_losses(csv_path):
    rows = list(csv.DictReader(open(csv_path)))
    return {int(r["step"]): (float(r["loss"]), float(r["lr"])) for r in rows if r["loss"]}


def test_pretrain_then_finetune_then_serve(tmp_path):
    corpus = write_corpus(tmp_path / "stories")
    summary = run(tiny_config(tmp_path, corpus, max_steps=20))
    losses = summary["losses"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0          # it learns
    stage1 = tmp_path / "run" / "final"
    card = (stage1 / "README.md").read_text()
    assert "optimizer steps | 20" in card and "held-out loss" in card
    gen = json.loads((stage1 / "generation_config.json").read_text())
    assert gen["repetition_penalty"] == 1.5 and gen["do_sample"] is True
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert "--- story:" in (tmp_path / "run" / "samples.log").read_text()

    books = tmp_path / "books"
    books.mkdir()
    with open(books / "lessons.jsonl", "w") as fh:
        for i in range(30):
            fh.write(json.dumps({"textbook": f"### Lesson: Topic {i}\n### Introduction\n" + "the river " * 60,
                                 "text": "source page"}) + "\n")
    ft = run(tiny_config(tmp_path, books, init=str(stage1), text_field="textbook", stage="finetune",
                         output_dir=str(tmp_path / "ft"), max_steps=8, lr=1e-3))
    assert ft["steps"] == 8 and ft["export"]
    lm = nucleus.load(tmp_path / "ft" / "final", device="cpu")
    out = nucleus.generate(lm, "### Lesson: Rivers\n", nucleus.SamplingSettings(max_new_tokens=12, seed=1))
    assert out.tokens == 12 and lm.n_params == summary["n_params"]


def test_resume_continues_the_same_curve(tmp_path):
    corpus = write_corpus(tmp_path / "c")
    whole = run(tiny_config(tmp_path, corpus, output_dir=str(tmp_path / "whole")))
    # the same run, interrupted after step 8 (a checkpoint), then resumed
    cut = tiny_config(tmp_path, corpus, output_dir=str(tmp_path / "cut"), halt_after=8)
    first = run(cut)
    assert first["steps"] == 8 and not (tmp_path / "cut" / "final").exists()
    rest = run(tiny_config(tmp_path, corpus, output_dir=str(tmp_path / "cut"), resume="auto"))
    assert rest["steps"] == 16
    a, b = train_losses(tmp_path / "whole" / "metrics.csv"), train_losses(tmp_path / "cut" / "metrics.csv")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    for step in range(9, 17):                     # the steps after the resume
        assert b[step][1] == pytest.approx(a[step][1], rel=1e-9)     # learning rate
        assert b[step][0] == pytest.approx(a[step][0], abs=1e-5)     # loss
    assert rest["losses"] == pytest.approx(whole["losses"][8:], abs=1e-5)
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["step-0000012", "step-0000016"]                  # keep_last=2, no .tmp left


def test_blocks_are_full_and_keep_eos_between_documents(tmp_path):
    corpus = write_corpus(tmp_path / "c", docs=12, words=37)
    from nucleus.tokenizer import load_tokenizer
    tok = load_tokenizer()
    spec = D.DataSpec(str(corpus), validation_fraction=0.0)
    cache = D.tokenize_to_cache(spec, tok, tmp_path / "cache")
    meta = json.loads((cache / "meta.json").read_text())
    stream = np.fromfile(cache / "train.bin", dtype=np.uint16)
    assert meta["documents"] == 12 and meta["tokens"] == len(stream)
    # every document is <s> ... </s>, back to back, with nothing in between
    assert stream[0] == tok.bos_token_id and stream[-1] == tok.eos_token_id
    assert (stream == tok.eos_token_id).sum() == 12 == (stream == tok.bos_token_id).sum()
    eos_at = np.flatnonzero(stream == tok.eos_token_id)
    assert all(stream[i + 1] == tok.bos_token_id for i in eos_at[:-1])
    first_doc = stream[1:eos_at[0]].tolist()
    assert tok.decode(first_doc) == sorted(corpus.iterdir())[0].read_text()
    blocks = B.PackedBlocks.from_cache(cache, "train", 32)
    assert len(blocks) == len(stream) // 32
    batch = blocks.batch([0, len(blocks) - 1])
    assert batch.shape == (2, 32) and (batch.flatten() != 0).all()          # full blocks, no padding
    assert batch[0].tolist() == stream[:32].tolist()


def test_token_cache_is_reused(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c", docs=5)
    from nucleus.tokenizer import load_tokenizer
    tok = load_tokenizer()
    spec = D.DataSpec(str(corpus))
    first = D.tokenize_to_cache(spec, tok, tmp_path / "cache")
    monkeypatch.setattr(D, "_documents", lambda *a: pytest.fail("re-tokenised"))
    assert D.tokenize_to_cache(spec, tok, tmp_path / "cache") == first
    (corpus / "doc000.txt").write_text("changed text\n")                   # a changed source is redone
    monkeypatch.undo()
    assert D.tokenize_to_cache(spec, tok, tmp_path / "cache") != first


def test_validation_split_is_held_out(tmp_path):
    corpus = write_corpus(tmp_path / "c", docs=200, words=20)
    from nucleus.tokenizer import load_tokenizer
    meta = json.loads((D.tokenize_to_cache(D.DataSpec(str(corpus), validation_fraction=0.2), load_tokenizer(),
                                           tmp_path / "cache") / "meta.json").read_text())
    assert meta["documents"] + meta["val_documents"] == 200 and 20 <= meta["val_documents"] <= 60


def test_bad_inputs_name_the_file_and_column(tmp_path):
    from nucleus.tokenizer import load_tokenizer
    tok = load_tokenizer()

    def tokenize(source, **kw):
        return D.tokenize_to_cache(D.DataSpec(str(source), **kw), tok, tmp_path / "cache")

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(D.DataError, match=r"empty\.txt: the file is empty"):
        tokenize(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(D.DataError, match=r"latin\.txt: not UTF-8 text \(invalid byte at offset 3\)"):
        tokenize(latin)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"content": "hello"}\n')
    with pytest.raises(D.DataError, match=r"rows\.jsonl.*no column 'text'; columns are \['content'\]"):
        tokenize(rows)
    (tmp_path / "no-text").mkdir()
    with pytest.raises(D.DataError, match=r"no-text: no \.txt"):
        tokenize(tmp_path / "no-text")


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("lr: 1.0e-3\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'learning_rate'"):
        TrainConfig.load(bad)
    assert TrainConfig.load(None, lr=0.5).lr == 0.5             # overrides alone


@pytest.mark.parametrize("name", ["rtx3090-pretrain", "rtx3090-finetune"])
def test_shipped_configs_load(name):
    from conftest import ROOT
    cfg = TrainConfig.load(ROOT / "train" / "configs" / f"{name}.yaml")
    assert cfg.seq_len >= 1024 and cfg.tokens_per_step == 131072 and cfg.tokens_per_step % (cfg.micro_batch * cfg.seq_len) == 0
    # the levers the H200 run kept (docs/training.md, "The 3090 profile"): 21.39 GiB peak, under the 22 GiB goal
    assert cfg.compile and cfg.liger and not cfg.activation_checkpointing and cfg.micro_batch == 2
    assert math.isclose(cfg.lr, 3e-4 if "pretrain" in name else 1e-4)


def test_benchmark_cpu_path_reports_throughput():
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("train_memory", ROOT / "bench" / "train_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--steps", "3"])
    assert result["scaled_down_for_cpu"] and result["size"] == "nano" and result["steps"] == 3
    assert result["tokens_per_second"] > 0 and result["peak_allocated_gib"] is None


def test_pretrain_script_takes_yaml_and_flag_overrides(tmp_path):
    from train import pretrain
    corpus = write_corpus(tmp_path / "c", docs=20)
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(f"size: tiny\ndataset: {corpus}\nseq_len: 64\nmicro_batch: 4\ntokens_per_step: 256\n"
                        f"precision: fp32\nwarmup_steps: 1\nmax_steps: 50\nsample_presets: []\n")
    summary = pretrain.main(["--config", str(cfg_file), "--max-steps", "3", "--output-dir", str(tmp_path / "o"),
                             "--cache-dir", str(tmp_path / "cache"), "--activation-checkpointing", "false"])
    assert summary["steps"] == 3 and (tmp_path / "o" / "final" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert saved["max_steps"] == 3 and saved["activation_checkpointing"] is False and saved["stage"] == "pretrain"


def test_train_speed_benchmark_cpu_smoke():
    """bench/train_speed.py's CPU path: both rows run on the same tokens and their curves agree."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--steps", "3"])
    assert out["a_plain_hf"]["tokens_per_second"] > 0 and out["b_nucleus"]["tokens_per_second"] > 0
    assert len(out["loss_curves"]["a"]) == len(out["loss_curves"]["b"]) == 3
    assert out["loss_curve_max_rel_diff"] < 0.01          # same numerics class, same tokens


def test_the_3090_config_on_a_machine_without_cuda_stops_at_once_with_the_way_out(tmp_path):
    """The 3090 configs switch Liger on; on this CPU machine the run must say so before it creates
    the output folder or tokenises anything (TinyStories takes minutes)."""
    import torch

    from conftest import ROOT
    from train import pretrain

    if torch.cuda.is_available():
        pytest.skip("this check is for machines without CUDA")
    corpus = write_corpus(tmp_path / "c", docs=5)
    with pytest.raises(SystemExit) as e:
        pretrain.main(["--config", str(ROOT / "train/configs/rtx3090-pretrain.yaml"), "--dataset", str(corpus),
                       "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert "liger: true runs Triton kernels on a CUDA GPU" in str(e.value) and "--liger false" in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
