"""Data parallel on CPU: `accelerate launch --multi_gpu --num_processes 2` (gloo) on a tiny model.

The 2-process run sees the same global batches as a 1-process run (each process takes half of
every micro-batch), so the two loss curves agree to float32 reduction-order noise; a checkpoint
written under 2 processes resumes under 2 processes to bit-identical weights; the export loads."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

import nucleus
from conftest import ROOT
from test_train import write_corpus
from test_train_runs import SMALL
from train.engine import TrainConfig, run

LOSS_TOLERANCE = 1e-5          # relative, per step: 1 vs 2 processes differ only in summation order (seen: 1e-7)


def launch(*configs, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests" / "train_launch.py"), *map(str, configs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [json.loads(c.with_suffix(".summary.json").read_text()) for c in configs]


def test_two_processes_match_one_and_resume_exactly(tmp_path):
    corpus = write_corpus(tmp_path / "c", docs=30, words=120)
    base = {**SMALL, "dataset": str(corpus), "cache_dir": str(tmp_path / "cache"), "max_steps": 6,
            "tokens_per_step": 512, "save_every": 3, "eval_every": 3}           # 2 accumulation steps
    one = run(TrainConfig(**{**base, "output_dir": str(tmp_path / "one")}))

    def config(name, **kw):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**base, "micro_batch": 2, **kw}))         # 2 x 2 = the same 4 blocks
        return path

    whole, first, rest = launch(config("whole", output_dir=str(tmp_path / "whole")),
                                config("cut", output_dir=str(tmp_path / "cut"), halt_after=3),
                                config("resumed", output_dir=str(tmp_path / "cut"), resume="auto"))
    assert whole["processes"] == 2 and whole["step_tokens"] == one["step_tokens"] == 512
    assert whole["losses"] == pytest.approx(one["losses"], rel=LOSS_TOLERANCE)
    assert whole["val_loss"] == pytest.approx(one["val_loss"], rel=LOSS_TOLERANCE)
    # resumed under 2 processes: the same curve and bit-identical final weights
    assert first["steps"] == 3 and rest["steps"] == 6
    assert rest["losses"] == whole["losses"][3:]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    lm = nucleus.load(tmp_path / "whole" / "final", device="cpu")
    assert lm.n_params == one["n_params"]
