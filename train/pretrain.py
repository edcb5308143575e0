"""Stage 1: pretrain a Nucleus model (TinyStories by default).

The real recipe, the full 1.13B model on one 24 GB RTX 3090:
    python -m train.pretrain --config train/configs/rtx3090-pretrain.yaml
Several GPUs (data parallel, no code change):
    accelerate launch --num_processes 4 -m train.pretrain --config train/configs/rtx3090-pretrain.yaml
Your own text (a .txt/.jsonl/.parquet file or a folder of them):
    python -m train.pretrain --config train/configs/rtx3090-pretrain.yaml --dataset my_corpus/ --output-dir runs/mine
Resume after an interruption (exactly where it stopped):
    python -m train.pretrain --config train/configs/rtx3090-pretrain.yaml --resume auto
Any config key can be overridden with --key value (e.g. --max-steps 100 --lr 2e-4).
The result lands in OUTPUT_DIR/final in Hugging Face format: `python app.py --model OUTPUT_DIR/final`.
"""
from __future__ import annotations

from pathlib import Path

from train import engine

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rtx3090-pretrain.yaml"


def main(argv=None) -> dict:
    return engine.main(argv, __doc__.splitlines()[0], DEFAULT_CONFIG, stage="pretrain")


if __name__ == "__main__":
    main()
