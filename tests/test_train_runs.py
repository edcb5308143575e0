"""The engine as a user meets it: config errors, re-runs into a used folder, resume without duplicate
log rows, export from a checkpoint, transformers 5.17, memory, MFU, and the bundled nano's metadata.
Tiny model, 64-token blocks, a handful of steps."""
import csv
import gc
import json
import math
import os
import subprocess
import sys
import types
import weakref

import pytest
import torch

from conftest import ROOT
from test_train import write_corpus
from train import config as C
from train import engine, export, model_setup
from train.engine import TrainConfig, run

SMALL = dict(init="scratch", size="tiny", seq_len=64, micro_batch=4, tokens_per_step=256, max_steps=4,
             warmup_steps=1, lr=3e-3, log_every=1, eval_every=2, eval_batches=1, save_every=2, keep_last=2,
             precision="fp32", activation_checkpointing=False, validation_fraction=0.2, sample_presets=[],
             sample_tokens=4)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c", docs=30, words=120)


def small(tmp_path, corpus, **kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, "dataset": str(corpus), "output_dir": str(tmp_path / "run"),
                          "cache_dir": str(tmp_path / "cache"), **kw})


def metric_steps(out, column="loss"):
    with open(out / "metrics.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r[column]]


# ---- config errors: one sentence naming the file, the key and what is allowed ------------------------
def test_config_values_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("precision: fp33\n")
    with pytest.raises(C.ConfigError, match=r"bad\.yaml: precision is 'fp33'; allowed: one of auto, bf16, fp16, fp32"):
        TrainConfig.load(bad)
    bad.write_text("lr: 3e-4\n")                          # YAML reads this as a string
    with pytest.raises(C.ConfigError, match=r"bad\.yaml: lr is '3e-4' \(str\); allowed: a number"):
        TrainConfig.load(bad)
    bad.write_text("activation_checkpointing: flase\n")
    with pytest.raises(C.ConfigError, match=r"activation_checkpointing is 'flase'; allowed: true or false"):
        TrainConfig.load(bad)
    bad.write_text("split: train\nvalidation_split: train\n")
    with pytest.raises(C.ConfigError, match=r"validation_split is 'train'; allowed: a split other than `split`"):
        TrainConfig.load(bad)
    with pytest.raises(C.ConfigError, match=r"overrides: keep_last is 0; allowed: an integer >= 1"):
        TrainConfig.load(None, keep_last=0)
    import argparse
    parser = argparse.ArgumentParser()
    C.add_config_flags(parser)
    with pytest.raises(SystemExit):                         # was: anything but true/1/yes/on meant False
        parser.parse_args(["--activation-checkpointing", "flase"])
    args = parser.parse_args(["--overwrite", "--compile", "false", "--lr", "1e-3"])
    assert args.overwrite is True and args.compile is False and args.lr == 1e-3


def test_entry_points_print_one_line_errors_and_run_as_module_or_file(tmp_path):
    """`python -m train.pretrain` and `python train/pretrain.py` both work (package, no sys.path edits);
    a config error is one line on stderr, not a traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("precision: fp33\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}           # as `pip install -e .` would; no install needed
    for cmd in (["-m", "train.pretrain"], [str(ROOT / "train" / "pretrain.py")]):
        out = subprocess.run([sys.executable, *cmd, "--config", str(bad)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=180, env=env)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert out.stderr.strip() == f"error: {bad}: precision is 'fp33'; allowed: one of auto, bf16, fp16, fp32"


def test_data_is_checked_before_the_model_is_built(tmp_path, monkeypatch):
    """Was: the 1.13B model (48 s, 5 GB) was built before 'the file is empty'."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    monkeypatch.setattr(model_setup.architecture, "build", lambda *a, **k: pytest.fail("model built before data check"))
    from train.data import DataError
    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        run(small(tmp_path, empty, size="nucleus-1b"))


# ---- re-runs and resume ---------------------------------------------------------------------------
def test_a_used_output_dir_is_refused_unless_resume_or_overwrite(tmp_path, corpus, capsys):
    first = run(small(tmp_path, corpus, max_steps=2))
    assert first["steps"] == 2
    with pytest.raises(C.ConfigError, match=r"holds a previous run; continue it with --resume auto, replace it "
                                            r"with --overwrite"):
        run(small(tmp_path, corpus, max_steps=3))
    assert metric_steps(tmp_path / "run") == [1, 2]                 # the earlier run is untouched
    again = run(small(tmp_path, corpus, max_steps=3, overwrite=True))
    assert again["steps"] == 3 and metric_steps(tmp_path / "run") == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    capsys.readouterr()
    fresh = run(small(tmp_path, corpus, max_steps=2, output_dir=str(tmp_path / "new"), resume="auto"))
    assert fresh["steps"] == 2 and "no checkpoint in" in capsys.readouterr().out


class FakeSummaryWriter:
    made = []

    def __init__(self, log_dir, purge_step=None):
        self.purge_step, self.scalars = purge_step, []
        FakeSummaryWriter.made.append(self)

    def add_scalar(self, name, value, step):
        self.scalars.append((name, step))

    def close(self):
        pass


def test_resume_after_a_kill_repeats_no_step_in_the_logs(tmp_path, corpus, monkeypatch, capsys):
    """Killed after step 3 was logged but before its checkpoint: the resume restarts from step 2 and
    metrics.csv, samples.log and TensorBoard must not show steps 3.. twice."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    kw = dict(max_steps=5, eval_every=1, sample_presets=["story"], save_every=2)
    run(small(tmp_path, corpus, halt_after=3, **kw))
    out = tmp_path / "run"
    import shutil
    shutil.rmtree(out / "checkpoints" / "step-0000003")            # the kill came before this was written
    FakeSummaryWriter.made.clear()
    run(small(tmp_path, corpus, resume="auto", **kw))
    assert "resumed from" in capsys.readouterr().out
    assert metric_steps(out) == [1, 2, 3, 4, 5] and metric_steps(out, "val_loss") == [1, 2, 3, 4, 5]
    sections = [line for line in (out / "samples.log").read_text().splitlines() if line.startswith("=== step")]
    assert sections == [f"=== step {i}" for i in range(1, 6)]
    assert FakeSummaryWriter.made[0].purge_step == 3                # TensorBoard drops the old 3.. on open
    # export from a checkpoint (was: a crash formatting the card, leaving OUT.tmp behind)
    ckpt = out / "checkpoints" / "step-0000004"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # the exporting machine has a GPU...
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    folder = export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "exp")])
    monkeypatch.undo()
    card = (folder / "README.md").read_text()
    assert "| optimizer steps | 4 |" in card and "| data | `" in card and " documents, " in card
    assert "H200" not in card and "| hardware | CPU (" in card      # ...the card names the training machine
    import nucleus
    assert nucleus.load(folder, device="cpu").n_params > 0


def test_a_failed_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    from conftest import write_tiny_checkpoint
    ckpt = write_tiny_checkpoint(tmp_path / "plain-model")               # no train_config.json: still exports
    good = export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out")])
    assert "stage **unknown**" in (good / "README.md").read_text()
    monkeypatch.setattr(export, "model_card", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain-model"]      # no out.tmp
    assert (tmp_path / "out" / "README.md").is_file()                # the previous export is intact


def test_empty_held_out_set_is_reported(tmp_path, corpus, capsys):
    summary = run(small(tmp_path, corpus, validation_fraction=0.0, max_steps=1))
    assert summary["val_loss"] is None
    assert "no evaluation: the held-out set has 0 tokens" in capsys.readouterr().out
    assert "held-out loss | not measured" in (tmp_path / "run" / "final" / "README.md").read_text()


# ---- the GPU image's transformers, memory, MFU ------------------------------------------------------
def test_activation_checkpointing_works_on_transformers_5_17():
    """5.17 has only gradient_checkpointing_enable (activation_checkpointing_enable arrived in 5.23)."""
    calls = []

    class Model517:
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            calls.append(gradient_checkpointing_kwargs)

    model_setup.enable_activation_checkpointing(Model517())
    assert calls == [{"use_reentrant": False}]
    from nucleus import architecture
    model = architecture.build("tiny")
    model_setup.enable_activation_checkpointing(model)                       # 5.23+: the new name
    assert model.is_activation_checkpointing


def test_mixed_precision_keeps_no_fp32_copy_of_the_logits(tmp_path, request):
    """accelerate's prepare converts outputs to fp32 (1 GB of logits per 4 x 2048 micro-batch)."""
    from accelerate.state import AcceleratorState

    from nucleus import architecture
    AcceleratorState._reset_state()              # the precision is fixed per process once set
    request.addfinalizer(AcceleratorState._reset_state)
    cfg = small(tmp_path, "unused", precision="bf16")
    acc = engine.make_accelerator(cfg)
    x = torch.randint(0, 32000, (2, 16))
    plain = acc.prepare(architecture.build("tiny"))
    assert plain(input_ids=x, labels=x).logits.dtype == torch.float32          # what the old engine got
    model, _ = engine.prepare(acc, architecture.build("tiny"), torch.optim.SGD([torch.nn.Parameter(torch.ones(1))]))
    with acc.autocast():
        out = model(input_ids=x, labels=x)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert acc.ddp_handler.gradient_as_bucket_view is True             # DDP: gradients without a second copy


def test_resume_frees_the_loaded_optimizer_state_and_abandons_later_checkpoints(tmp_path, corpus, monkeypatch):
    """The CPU copy of the optimizer state (~9 GB for the 1.13B) must not live for the resumed run."""
    run(small(tmp_path, corpus, halt_after=2))
    loaded, alive = [], []
    real_load = torch.load

    class Loaded(dict):
        pass

    def tracking_load(*a, **k):
        obj = Loaded(real_load(*a, **k))
        loaded.append(weakref.ref(obj))
        return obj

    def batch_and_check(self, indices, _orig=engine.B.PackedBlocks.batch):
        gc.collect()
        alive.append(any(r() is not None for r in loaded))
        return _orig(self, indices)

    monkeypatch.setattr(torch, "load", tracking_load)
    monkeypatch.setattr(engine.B.PackedBlocks, "batch", batch_and_check)
    run(small(tmp_path, corpus, resume="auto"))
    assert loaded and alive and not any(alive)
    monkeypatch.undo()
    # resuming from an earlier checkpoint abandons the later ones: a stale step-4 would be picked by
    # the next `--resume auto` (or would prune the new run's checkpoints)
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    run(small(tmp_path, corpus, resume=str(out / "checkpoints" / "step-0000002"), halt_after=3))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert metric_steps(out) == [1, 2, 3]


def test_mfu_counts_non_embedding_parameters_and_attention():
    from nucleus import architecture
    cfg = architecture.config("nucleus-1b")
    n = 1_134_596_096
    expected = 6 * (n - 32000 * 4096) + 12 * 4 * 4096 * 2048
    assert engine.flops_per_token(cfg, n, 2048) == expected
    # the docs' H200 reference figure uses the same formula: 57,305 tok/s at 989 TFLOP/s
    assert f"{expected * 57305 / 989e12:.1%} MFU by this formula" in (ROOT / "docs" / "training.md").read_text()


# ---- the bundled nano's metadata -----------------------------------------------------------------
def test_bundled_nano_metadata_describes_its_training():
    for folder, stage, data in (("nucleus-nano-stage1", "pretrain", "data/nano-corpus/stage1"),
                                ("nucleus-nano", "finetune", "data/nano-corpus/stage2")):
        path = ROOT / "models" / folder
        cfg = json.loads((path / "train_config.json").read_text())
        assert cfg["size"] == "nano" and cfg["stage"] == stage and cfg["dataset"] == data
        card = (path / "README.md").read_text()
        assert "[unknown]" not in card and "stage **unknown**" not in card
    card = (ROOT / "models" / "nucleus-nano-stage1" / "README.md").read_text()
    assert "stage **pretrain**" in card and "`data/nano-corpus/stage1`" in card and "| hardware | CPU" in card


# ---- the kit as a new user meets it -----------------------------------------------------------------
def test_every_flag_has_a_help_line():
    import argparse
    parser = argparse.ArgumentParser()
    C.add_config_flags(parser)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) == len(C.HELP)                 # every key but `stage`, plus --config
    assert all(a.help and len(a.help) > 10 for a in flags), [a.dest for a in flags if not a.help]
    assert set(C.HELP) == {f.name for f in C.dataclasses.fields(TrainConfig)}


def test_a_missing_init_folder_stops_before_any_tokenising(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(engine, "load_data", lambda *a, **k: pytest.fail("tokenised before the init check"))
    with pytest.raises(C.ConfigError, match=r"init: there is no folder runs/no-such-run/final \(and it is not a "
                                            r"Hub id\); run the stage before this one first"):
        run(small(tmp_path, corpus, init="runs/no-such-run/final"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.ConfigError, match=r"holds no model \(no config\.json\)"):
        run(small(tmp_path, corpus, init=str(tmp_path / "empty")))
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    out = subprocess.run([sys.executable, "-m", "train.finetune", "--config", "train/configs/nano-finetune.yaml",
                          "--init", str(tmp_path / "nothing-here"), "--dataset", str(corpus)],
                         capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "init: there is no folder" in out.stderr


def test_a_run_ends_with_one_line_saying_where_the_model_is(tmp_path, corpus, capsys):
    summary = run(small(tmp_path, corpus, max_steps=2))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    final = tmp_path / "run" / "final"
    assert last == (f"done: the final model is in {final} (held-out loss {summary['val_loss']:.4f}, perplexity "
                    f"{math.exp(summary['val_loss']):.2f}); try it: python app.py --model {final}")
    run(small(tmp_path, corpus, max_steps=4, halt_after=1, output_dir=str(tmp_path / "halted")))
    halted = capsys.readouterr().out.strip().splitlines()[-1]
    assert halted.startswith("stopped at step 1 of 4 (") and halted.endswith("same command and --resume auto")


def test_export_refuses_another_model_without_overwrite_and_writes_ordinary_files(tmp_path, corpus):
    run(small(tmp_path, corpus, max_steps=2))
    ckpt, out = tmp_path / "run" / "checkpoints" / "step-0000002", tmp_path / "exports" / "mine"
    old = os.umask(0o022)
    try:
        export.main(["--checkpoint", str(ckpt), "--out", str(out)])
        assert oct(out.stat().st_mode & 0o777) == "0o755"
        assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}
        with pytest.raises(SystemExit, match=r"holds another model; replace it with --overwrite"):
            export.main(["--checkpoint", str(ckpt), "--out", str(out)])
        export.main(["--checkpoint", str(ckpt), "--out", str(out), "--overwrite"])
        assert (out / "config.json").is_file()
    finally:
        os.umask(old)
    assert "exports/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_cpu_quickstart_commands_run_as_documented(tmp_path):
    """docs/training.md's two-minute recipe: its data command as written, then its config (2 steps here)."""
    doc = (ROOT / "docs" / "training.md").read_text()
    make_data = next(line for line in doc.splitlines() if line.startswith('python -c "from pydoc_data'))
    subprocess.run(make_data, shell=True, cwd=tmp_path, check=True, timeout=60,
                   env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    text = (tmp_path / "data" / "pydoc-topics.txt").read_text()
    assert text.count("<|doc|>") >= 50 and len(text) > 200_000
    assert "python -m train.pretrain --config train/configs/cpu-quickstart.yaml" in doc
    out = subprocess.run([sys.executable, "-m", "train.pretrain", "--config", "train/configs/cpu-quickstart.yaml",
                          "--dataset", str(tmp_path / "data" / "pydoc-topics.txt"), "--max-steps", "2",
                          "--eval-every", "2", "--output-dir", str(tmp_path / "run"),
                          "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith(f"done: the final model is in {tmp_path / 'run' / 'final'}")
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
