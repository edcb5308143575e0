"""Bits per character: how well models predict a text, comparable across tokenizers.

    python -m train.bits_per_char --model runs/finetune/final --model runs/persian/final --text fa.txt

Loss per token cannot compare two tokenizers: a model whose tokenizer spends 4 tokens on a word
has an easier task per token than one that spends 1. The text's total negative log-likelihood
is the same quantity whatever the split, so it is divided by the text's characters instead:
bits per character = sum over tokens of -log2 p(token | before) / characters. Each text is scored
after <s> (the token after <s> counts too) in windows of the model's context; every token of the
text is scored once. Lower is better.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def bits_per_character(model, tokenizer, texts: list[str], window: int | None = None) -> dict:
    """{bits_per_character, bits_per_token, tokens, characters} of `texts` under `model`."""
    import torch

    window = window or int(model.config.max_position_embeddings)
    device = next(model.parameters()).device
    nats, tokens, chars = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            chars += len(text)
            for start in range(0, len(ids), window - 1):         # each window: <s> + up to window-1 tokens
                chunk = [tokenizer.bos_token_id] + ids[start:start + window - 1]
                x = torch.tensor([chunk], device=device)
                logp = torch.log_softmax(model(x).logits[0, :-1].double(), dim=-1)     # (len-1, vocab)
                nats -= logp.gather(-1, x[0, 1:, None]).sum().item()
                tokens += len(chunk) - 1
    bits = nats / math.log(2)
    return {"bits_per_character": bits / max(chars, 1), "bits_per_token": bits / max(tokens, 1),
            "tokens": tokens, "characters": chars}


def read_texts(path: str) -> list[str]:
    """Paragraphs of a text file (separated by blank lines), or the `text` of each JSON line."""
    import json

    raw = Path(path).read_text(encoding="utf-8")
    if path.endswith(".jsonl"):
        return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    return [p.strip() for p in raw.split("\n\n") if p.strip()]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m train.bits_per_char", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="a folder or Hub id (repeat to compare)")
    p.add_argument("--text", required=True, help="held-out text: a .txt file (paragraphs) or .jsonl with `text`")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    import nucleus

    texts = read_texts(args.text)
    if not texts:
        p.error(f"{args.text} holds no text")
    rows = []
    for name in args.model:
        lm = nucleus.load(name, device=args.device, dtype="float32", quantize="none")
        row = {"model": name, "vocabulary": len(lm.tokenizer), **bits_per_character(lm.model, lm.tokenizer, texts)}
        rows.append(row)
        print(f"{name}: {row['bits_per_character']:.4f} bits/char ({row['tokens']:,} tokens, {row['characters']:,} "
              f"characters, {row['tokens'] / row['characters']:.3f} tokens/char, vocabulary {row['vocabulary']:,})")
    return rows


if __name__ == "__main__":
    main()
