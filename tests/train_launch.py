"""Runs TrainConfigs in order inside each process of `accelerate launch` (tests/test_train_multiprocess.py).

    accelerate launch --multi_gpu --num_processes 2 tests/train_launch.py a.json b.json ...

Each argument is a JSON file of TrainConfig fields; the main process writes that run's summary
beside it as <name>.summary.json.
"""
import json
import os
import sys
from pathlib import Path

from train.engine import TrainConfig, run

if __name__ == "__main__":
    for path in map(Path, sys.argv[1:]):
        summary = run(TrainConfig(**json.loads(path.read_text())))
        if os.environ.get("RANK", "0") == "0":
            path.with_suffix(".summary.json").write_text(json.dumps(summary, default=str))
