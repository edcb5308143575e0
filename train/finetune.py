"""Stage 2: fine-tune a stage-1 model (Tiny Textbooks by default).

The real recipe, after train/pretrain.py, on one 24 GB RTX 3090:
    python -m train.finetune --config train/configs/rtx3090-finetune.yaml
which starts from runs/pretrain/final (set --init to another folder or a Hub id). Several GPUs:
    accelerate launch --num_processes 4 -m train.finetune --config train/configs/rtx3090-finetune.yaml
Resume: add --resume auto. Any config key can be overridden with --key value.
The result lands in OUTPUT_DIR/final in Hugging Face format: `python app.py --model OUTPUT_DIR/final`.
"""
from __future__ import annotations

from pathlib import Path

from train import engine

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rtx3090-finetune.yaml"


def main(argv=None) -> dict:
    return engine.main(argv, __doc__.splitlines()[0], DEFAULT_CONFIG, stage="finetune")


if __name__ == "__main__":
    main()
