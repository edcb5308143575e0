"""The next-stage recipes' 3090 configs (instruct, code, code-instruct): they load, name the data
they document, and run end to end on CPU from small local files in their datasets' schemas, with
the GPU-only levers switched off and the nano as the starting model."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from train.config import TrainConfig

CPU = ["--init", "models/nucleus-nano", "--liger", "false", "--compile", "false", "--precision", "fp32",
       "--seq-len", "128", "--micro-batch", "2", "--tokens-per-step", "256", "--max-steps", "2",
       "--eval-every", "2", "--sample-tokens", "4", "--warmup-steps", "1"]
CODE = ["def add(a, b):\n    return a + b\n", "class Stack:\n    def __init__(self):\n        self.items = []\n",
        "import os\n\nprint(os.getcwd())\n", "for i in range(10):\n    print(i * i)\n"]


@pytest.mark.parametrize("name, dataset, files", [
    ("rtx3090-instruct", "Open-Orca/OpenOrca", "1M-GPT4-Augmented.parquet"),
    ("rtx3090-code", "bigcode/the-stack-smol", "data/python/*"),
    ("rtx3090-code-instruct", "ise-uiuc/Magicoder-OSS-Instruct-75K", None)])
def test_the_recipe_configs_load_and_name_their_data(name, dataset, files):
    cfg = TrainConfig.load(ROOT / "train" / "configs" / f"{name}.yaml")
    assert cfg.dataset == dataset and cfg.dataset_files == files
    assert cfg.seq_len == 2048 and cfg.micro_batch == 2 and cfg.liger and not cfg.activation_checkpointing
    assert cfg.tokens_per_step % (cfg.micro_batch * cfg.seq_len) == 0


def run(module, config, data, out, *extra):
    return subprocess.run([sys.executable, "-m", module, "--config", f"train/configs/{config}.yaml", "--dataset",
                           str(data), "--output-dir", str(out), "--cache-dir", str(out.parent / "cache"), *CPU,
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_code_pretraining_runs_from_a_local_file_in_the_stacks_schema(tmp_path):
    data = tmp_path / "python.jsonl"
    data.write_text("".join(json.dumps({"content": CODE[i % 4] * (1 + i % 3), "lang": "Python",
                                        "license": "mit"}) + "\n" for i in range(40)))
    out = run("train.pretrain", "rtx3090-code", data, tmp_path / "code")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith(f"done: the final model is in {tmp_path / 'code' / 'final'}")
    assert json.loads((tmp_path / "code" / "train_config.json").read_text())["text_field"] == "content"


def test_code_instruct_runs_from_a_local_file_in_magicoders_schema(tmp_path):
    data = tmp_path / "magicoder.jsonl"
    data.write_text("".join(json.dumps({"problem": f"Write a function that returns {i} squared.",
                                        "solution": f"```python\ndef f():\n    return {i * i}\n```",
                                        "lang": "python"}) + "\n" for i in range(40)))
    out = run("train.instruct", "rtx3090-code-instruct", data, tmp_path / "ci")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "of them response tokens that the loss covers" in out.stdout
    samples = (tmp_path / "ci" / "samples.log").read_text()
    assert "--- instruct-code: '<s>[INST] You write correct Python." in samples    # the chat preset, templated
