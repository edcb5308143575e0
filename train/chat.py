"""Instruction-tuning data: conversations rendered with a chat template, the loss on the responses
only, and examples packed into blocks without one example ever attending to another.

The chat format (Mistral's v1 style, which the Nucleus tokenizer's own pieces spell):

    <s>[INST] {system}\\n\\n{question} [/INST] {response}</s>

with the system prompt left out when empty, and further turns appended as
`[INST] {user} [/INST] {assistant}</s>`. CHAT_TEMPLATE is that format as a Jinja template; the
export stores it in the tokenizer (tokenizer_config.json), so `apply_chat_template` renders at
inference exactly the text the model was trained on (tests/test_instruct.py checks the ids).

Labels: -100 (ignored by the loss) on every prompt token, the token ids themselves on the response
and its closing </s>. Packing: examples are laid one after the other into blocks of seq_len
tokens, each example's position ids starting again at 0; transformers reads restarting position
ids as separate sequences and builds a block-diagonal causal mask (masking_utils'
find_packed_sequence_indices, for the eager and sdpa attention the CPU and the 3090 use) when no
KV cache is in play, as in training (train/engine.py sets use_cache off), so an example sees only
itself. The rest of a block is padding, with labels -100.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from train import data as D

IGNORE = -100
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% if m['content'] %}{% set ns.system = m['content'] + '\\n\\n' %}{% endif %}"
    "{% elif m['role'] == 'user' %}[INST] {{ ns.system }}{{ m['content'] }} [/INST]{% set ns.system = '' %}"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('roles are system, user and assistant; got ' + m['role']) }}{% endif %}"
    "{% endfor %}")


@dataclass(frozen=True)
class Fields:
    """Where a record keeps its parts: OpenOrca's names by default."""
    system: str = "system_prompt"
    question: str = "question"
    response: str = "response"


def messages_of(record: dict, fields: Fields, where: str) -> list[dict]:
    """One record as chat messages; a missing or non-text question or response is a DataError."""
    out = []
    for role, key, required in (("system", fields.system, False), ("user", fields.question, True),
                                ("assistant", fields.response, True)):
        value = record.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            raise D.DataError(f"{where}: a record has no text in {key!r} (columns: {sorted(record)}); "
                              "set the field names in the config")
        out.append({"role": role, "content": value.strip()})
    return out


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation ending with the assistant's reply: the ids are those of
    the template's full text; the labels copy them after the prompt (what the template renders
    before the reply) and are IGNORE within it."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = 0                                  # the prompt's tokens are a prefix of the whole (checked, not assumed)
    while n < min(len(head), len(ids)) and head[n] == ids[n]:
        n += 1
    return ids, [IGNORE] * n + ids[n:]


class PackedExamples:
    """Blocks of seq_len tokens: (ids, labels, position ids) per block, as arrays in memory."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int):
        self.seq_len = seq_len
        blocks, ids, labels, pos = [], [], [], []
        for e_ids, e_labels in examples:
            if len(ids) + len(e_ids) > seq_len:
                blocks.append(self._close(ids, labels, pos, pad_id))
                ids, labels, pos = [], [], []
            ids += e_ids
            labels += e_labels
            pos += list(range(len(e_ids)))
        if ids:
            blocks.append(self._close(ids, labels, pos, pad_id))
        shape = (len(blocks), seq_len)
        self.ids = np.array([b[0] for b in blocks], dtype=np.int64).reshape(shape)
        self.labels = np.array([b[1] for b in blocks], dtype=np.int64).reshape(shape)
        self.pos = np.array([b[2] for b in blocks], dtype=np.int64).reshape(shape)

    def _close(self, ids, labels, pos, pad_id):
        pad = self.seq_len - len(ids)      # padding: a sequence of its own (positions from 0), no loss
        return ids + [pad_id] * pad, labels + [IGNORE] * pad, pos + list(range(pad))

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        idx = np.asarray([int(i) for i in indices])
        return {"input_ids": torch.from_numpy(self.ids[idx]), "labels": torch.from_numpy(self.labels[idx]),
                "position_ids": torch.from_numpy(self.pos[idx])}


def fit(ids: list[int], labels: list[int], seq_len: int) -> tuple[list[int], list[int]] | None:
    """An example cut to seq_len (the end of the response goes), or None when not one response token
    would be left to learn from."""
    ids, labels = ids[:seq_len], labels[:seq_len]
    return (ids, labels) if any(x != IGNORE for x in labels) else None


def load_examples(cfg, tokenizer, fields: Fields, say=print):
    """(train, held-out or None, meta) from cfg.dataset (a Hub id or local JSON lines), the
    held-out share chosen by a hash of each example's text, as the other stages do."""
    spec = D.DataSpec(cfg.dataset, fields.question, cfg.split, cfg.dataset_config, cfg.validation_split,
                      cfg.validation_fraction, cfg.max_documents, cfg.streaming, None, cfg.dataset_files)
    ds, where = D.load_records(spec, cfg.split)
    tokenizer.chat_template = CHAT_TEMPLATE
    train, val, stats = [], [], {"examples": 0, "cut": 0, "dropped": 0}
    for record in ds:
        messages = messages_of(record, fields, where)
        ids, labels = encode(tokenizer, messages)
        kept = fit(ids, labels, cfg.seq_len)
        stats["cut"] += kept is not None and len(ids) > cfg.seq_len
        if kept is None:
            stats["dropped"] += 1
            continue
        text = json.dumps([m["content"] for m in messages])
        (val if D._is_validation(text, cfg.validation_fraction) else train).append(kept)
        stats["examples"] += 1
        if cfg.max_documents and stats["examples"] >= cfg.max_documents:
            break
    if not train:
        raise D.DataError(f"{where}: no example left to train on ({stats['dropped']} had no room for a response "
                          f"in seq_len {cfg.seq_len})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    meta = {"source": cfg.dataset, "format": "chat", "documents": len(train), "val_documents": len(val),
            "tokens": sum(len(e[0]) for e in train), "val_tokens": sum(len(e[0]) for e in val),
            "response_tokens": sum(sum(x != IGNORE for x in e[1]) for e in train), **stats,
            "held_out": f"held-out set: {cfg.validation_fraction:.1%} of the examples, chosen by text hash"}
    say(f"data: {len(train):,} examples ({meta['tokens']:,} tokens, {meta['response_tokens']:,} of them response "
        f"tokens that the loss covers); {len(val):,} held out; {stats['cut']} cut to seq_len {cfg.seq_len}, "
        f"{stats['dropped']} dropped (no room for a response)")
    return PackedExamples(train, cfg.seq_len, pad), PackedExamples(val, cfg.seq_len, pad) if val else None, meta
