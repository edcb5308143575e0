"""Extend the Nucleus tokenizer with pieces of a new language (Persian by default), and give the
model an embedding row and an output row for each new piece, so pretraining can continue in it.

    python -m train.extend_tokenizer --init runs/finetune/final --output runs/persian-init
    python -m train.pretrain --config train/configs/rtx3090-persian.yaml          # from runs/persian-init
    python -m train.bits_per_char --model runs/finetune/final --model runs/persian/final --text fa.txt

Mistral's 32k tokenizer spells Persian almost one token per character (docs/training.md,
"Persian"). The recipe, the one Chinese-LLaMA made known for Llama's tokenizer:
1. read sample text (`--dataset`: wikimedia/wikipedia with `--dataset-config 20231101.fa`, or a
   local file), up to --max-documents documents;
2. train a SentencePiece BPE model of --pieces pieces on it (`sentencepiece`), with the base
   model's normalisation (no rules, a "▁" before the text, spaces kept), so its pieces are spelt
   the way the base spells them;
3. append to the base SentencePiece model every new piece it lacks, in the new model's order and
   with scores below every base score: the base's merges keep their priority, so English, code and
   everything the base knew is split as before, and every old piece keeps its id (new ids start at
   32000); a BPE piece is reachable only through its intermediate pieces, and the new model's
   pieces include them;
4. convert the merged model into transformers' fast tokenizer (as nucleus/tokenizer.py converts
   the base), and check it splits like `sentencepiece` itself on the sample;
5. resize the embeddings and the output layer (transformers' resize_token_embeddings) and set each
   new row to the mean of the old rows, so a new piece starts as an average token rather than noise.
The folder written is a checkpoint like any other (safetensors, tokenizer, extension.json).
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

SAMPLE_CHARS = 200_000_000      # at most this much text goes to the SentencePiece trainer
# A new piece is kept only if it holds a letter of the Arabic script (Persian's) or the zero-width
# non-joiner Persian writes inside words: pieces such as "\n" or "▁PNG", learnt from Latin text
# inside the sample, would change how the base splits English and code. Change it for another script.
SCRIPT = re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff\u200c]")


def train_pieces(texts, pieces: int):
    """A SentencePiece BPE ModelProto trained on `texts`, normalised as Mistral's model is."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=pieces, model_type="bpe",
        character_coverage=1.0, byte_fallback=False, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        hard_vocab_limit=False, max_sentence_length=1 << 16, minloglevel=2, num_threads=2)
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto


def merge(base, extra) -> list[str]:
    """Append extra's normal pieces that base lacks to base (a ModelProto, changed in place), scored
    below every base piece in extra's order; only pieces of the new script (SCRIPT). Returns the
    pieces added."""
    have = {p.piece for p in base.pieces}
    floor = min(p.score for p in base.pieces)
    added = []
    for p in extra.pieces:
        if p.type != p.NORMAL or p.piece in have or not SCRIPT.search(p.piece):
            continue
        new = base.SentencePiece(piece=p.piece, score=floor - 1 - len(added), type=p.NORMAL)
        base.pieces.append(new)
        have.add(p.piece)
        added.append(p.piece)
    return added


def extended_tokenizer(base_tokenizer, texts, pieces: int):
    """(the extended fast tokenizer, the pieces added, the merged ModelProto's bytes)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import AutoTokenizer

    from nucleus.tokenizer import _CONFIG, sentencepiece_path

    base = pb.ModelProto()
    base.ParseFromString(sentencepiece_path().read_bytes())
    if [p.piece for p in base.pieces] != base_tokenizer.convert_ids_to_tokens(list(range(len(base.pieces)))) \
            or len(base_tokenizer) != len(base.pieces):
        raise SystemExit("the starting model's tokenizer is not Mistral's 32k one (mistral-common's "
                         "tokenizer.model.v1), which is the one this recipe extends")
    added = merge(base, train_pieces(texts, pieces))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(base.SerializeToString())
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(_CONFIG))
        tok = AutoTokenizer.from_pretrained(tmp)
    if getattr(base_tokenizer, "chat_template", None):
        tok.chat_template = base_tokenizer.chat_template
    return tok, added, base.SerializeToString()


def mean_rows(model, old: int) -> None:
    """Rows old.. of the input embeddings and the output layer set to the mean of rows ..old."""
    import torch

    with torch.no_grad():
        for weight in {id(w): w for w in (model.get_input_embeddings().weight,
                                          model.get_output_embeddings().weight)}.values():
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)


def sample_texts(spec, max_chars: int = SAMPLE_CHARS):
    from train import data as D

    total = 0
    for text in D.documents(spec):
        yield text
        total += len(text)
        if total >= max_chars:
            return


# ---- the command -------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.extend_tokenizer", description=__doc__.splitlines()[0])
    p.add_argument("--init", required=True, help="the model to extend: a folder or Hub id (Mistral's 32k tokenizer)")
    p.add_argument("--output", required=True, help="where the extended checkpoint goes")
    p.add_argument("--dataset", default="wikimedia/wikipedia", help="Hub dataset or local text file/folder")
    p.add_argument("--dataset-config", default="20231101.fa", help="the Hub dataset's configuration")
    p.add_argument("--text-field", default="text", help="the column holding the text")
    p.add_argument("--max-documents", type=int, default=200_000, help="documents to train the pieces on")
    p.add_argument("--pieces", type=int, default=16_000, help="size of the new language's piece model")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    args = p.parse_args(argv)
    if args.pieces < 100 or args.max_documents < 1:
        p.error("--pieces must be at least 100 and --max-documents at least 1")
    if Path(args.output).exists() and any(Path(args.output).iterdir()) and not args.overwrite:
        p.error(f"{args.output} is not empty; choose another --output or pass --overwrite")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    import nucleus
    from train import data as D

    lm = nucleus.load(args.init, device="cpu", dtype=torch.float32, quantize="none")
    local = Path(args.dataset).exists()
    spec = D.DataSpec(args.dataset, args.text_field, "train", None if local else args.dataset_config,
                      validation_fraction=0.0, max_documents=args.max_documents)
    texts = list(sample_texts(spec))
    print(f"sample: {len(texts):,} documents, {sum(map(len, texts)):,} characters from {args.dataset}")
    tok, added, proto = extended_tokenizer(lm.tokenizer, texts, args.pieces)
    old = lm.model.get_input_embeddings().weight.shape[0]
    lm.model.resize_token_embeddings(len(tok), mean_resizing=False)
    mean_rows(lm.model, old)
    out = Path(args.output)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stored = json.loads((lm.path / "config.json").read_text()).get("dtype") or "float32"   # keep the base's dtype
    lm.model.to(getattr(torch, stored) if isinstance(stored, str) and hasattr(torch, stored) else torch.float32)
    lm.model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(proto)
    info = {"base": args.init, "base_pieces": old, "added_pieces": len(added), "vocab_size": len(tok),
            "dataset": args.dataset, "dataset_config": spec.config_name, "documents": len(texts),
            "trained_pieces": args.pieces, "new_rows": "mean of the base rows"}
    (out / "extension.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")
    print(f"done: {len(added):,} pieces added ({old:,} -> {len(tok):,}); the extended model is in {out}")
    return info


if __name__ == "__main__":
    main()
