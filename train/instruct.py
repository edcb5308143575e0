"""Stage 3: instruction tuning on conversations (OpenOrca by default), the loss on the replies only.

The recipe, after train/finetune.py, on one 24 GB RTX 3090:
    python -m train.instruct --config train/configs/rtx3090-instruct.yaml
which starts from runs/finetune/final (or --init NucleusOrg/Nucleus-1B-alpha-1). Your own data:
    python -m train.instruct --config train/configs/nano-instruct.yaml --dataset my_chats.jsonl
one JSON object per line with `system_prompt` (optional), `question` and `response`, OpenOrca's
fields (--system-field, --question-field and --response-field name others). Resume: add --resume
auto. The result lands in OUTPUT_DIR/final with the chat template in its tokenizer (train/chat.py):
`python app.py --model OUTPUT_DIR/final`.
"""
from __future__ import annotations

from pathlib import Path

from train import chat, engine

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "rtx3090-instruct.yaml"


def chat_data(cfg, tokenizer, acc) -> engine.Data:
    """The engine's data for this stage: packed conversations (train/chat.py), built in memory by
    every process alike (the same records in the same order give the same blocks)."""
    fields = chat.Fields(cfg.system_field, cfg.question_field, cfg.response_field)
    train, val, meta = chat.load_examples(cfg, tokenizer, fields, say=acc.print)
    return engine.Data(train, val, meta, chat.CHAT_TEMPLATE)


def main(argv=None) -> dict:
    return engine.main(argv, __doc__.splitlines()[0], DEFAULT_CONFIG, stage="instruct", data_loader=chat_data)


if __name__ == "__main__":
    main()
