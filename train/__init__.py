"""The Nucleus training kit: pretrain.py and finetune.py over one engine (see docs/training.md)."""
