"""Token records: what the model proposed at each step, and what each sampling setting did to it.

The decode loop (nucleus/decode.py) hands over, per step, the scores after each stage of the
sampling chain: "raw" (the model's float32 logits), then the stages of `SamplingSettings.chain()`
that ran ("penalties", "temperature", "top-k", "top-p", "min-p"); the last is the distribution the
token was drawn from. `summarise` turns one step into a TokenRecord: the top candidates with their
probability at every stage, which stage removed each, and how many tokens each stage removed.
Nothing runs the model again and nothing is hooked into it. Cost: a few softmaxes, two top-k and
one comparison per stage over the vocabulary (bench/decode_speed.py measures records on and off).

A remote engine reports only the model's column (nucleus/remote.py builds records with NaN for
the stages). `openai_logprobs` turns records of either kind into OpenAI's completions `logprobs`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

RAW, PENALTIES, TEMPERATURE = "raw", "penalties", "temperature"


@dataclass(frozen=True)
class Candidate:
    token_id: int
    token: str              # the vocabulary piece, with SentencePiece's "▁" shown as a space
    raw: float              # the model's probability (softmax of its logits)
    penalized: float        # after repetition penalty and no-repeat n-gram (= raw when neither is on)
    tempered: float         # after temperature (= penalized when greedy or temperature 1)
    final: float            # in the distribution the token was drawn from; 0 = removed
    removed_by: str | None  # the stage that removed it: "penalties", "top-k", "top-p", "min-p"


@dataclass(frozen=True)
class TokenRecord:
    token_id: int
    text: str                       # the text this token added (a split character shows on its last byte)
    raw_logprob: float              # log of the model's probability for it
    final: float                    # its probability in the distribution it was drawn from
    candidates: tuple[Candidate, ...]   # the most likely ones (raw and final) and the chosen one
    removed: dict[str, int] = field(default_factory=dict)   # stage -> tokens it removed (of the vocabulary)
    kept: int = 0                   # tokens left to draw from
    greedy: bool = False

    def with_text(self, text: str) -> TokenRecord:
        return TokenRecord(self.token_id, text, self.raw_logprob, self.final, self.candidates, self.removed,
                           self.kept, self.greedy)


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def piece_text(piece: str) -> str:
    """A vocabulary piece as text: "▁" is a space, a byte piece of an ASCII character is that
    character ("<0x0A>" -> newline); a byte of a longer UTF-8 character keeps its <0x..> name."""
    byte = _BYTE_PIECE.match(piece)
    if byte:
        value = int(byte[1], 16)
        return chr(value) if value < 0x80 else piece
    return piece.replace("▁", " ")


def summarise(stages: tuple[tuple[str, torch.Tensor], ...], chosen: int, top_n: int, tokenizer,
              greedy: bool) -> TokenRecord:
    """One step's record (its `text` empty: the caller knows it once the token is decoded).
    stages: ("raw", (vocab,) float32 logits) first, then each stage's scores, the drawn-from last."""
    by_name = dict(stages)
    raw, final = by_name[RAW], stages[-1][1]
    raw_lp = torch.log_softmax(raw, -1)
    final_p = torch.softmax(final, -1)
    pen_p = torch.softmax(by_name[PENALTIES], -1) if PENALTIES in by_name else raw_lp.exp()
    temp_p = torch.softmax(by_name[TEMPERATURE], -1) if TEMPERATURE in by_name else pen_p
    n = min(top_n, raw.numel())
    kept = int((~torch.isneginf(final)).sum())     # a stage removes a token by setting it to -inf
    # the final distribution's best among the tokens it kept: past them its top-k would pad with
    # removed (-inf) tokens in arbitrary order (<s>, control bytes), which tell nothing
    ids = list(dict.fromkeys(raw.topk(n).indices.tolist() + final.topk(min(n, kept)).indices.tolist() + [chosen]))
    index = torch.tensor(ids)
    # removed at a stage: -inf now, finite before (the raw logits count as the stage before the first)
    removed, gone, before = {}, [], torch.isneginf(raw)
    for name, scores in stages[1:]:
        now = torch.isneginf(scores)
        newly = now & ~before
        removed[name] = int(newly.sum())
        gone.append((name, newly[index].tolist()))
        before = now
    values = torch.stack([raw_lp[index].exp(), pen_p[index], temp_p[index], final_p[index]]).tolist()
    pieces = tokenizer.convert_ids_to_tokens(ids)
    candidates = []
    for j, (tid, piece) in enumerate(zip(ids, pieces)):
        by = next((name for name, flags in gone if flags[j]), None)
        candidates.append(Candidate(tid, piece_text(piece), values[0][j], values[1][j], values[2][j], values[3][j],
                                    by))
    candidates.sort(key=lambda c: -c.raw)
    return TokenRecord(chosen, "", float(raw_lp[chosen]), float(final_p[chosen]), tuple(candidates),
                       {k: v for k, v in removed.items() if v}, kept, greedy)


def keep_shown(records: list[TokenRecord], texts: list[str], shown: str) -> tuple[TokenRecord, ...]:
    """The records of the tokens whose text is shown, each with its text (a stop string and what
    follows it are not shown, so their tokens have no record)."""
    out, at = [], 0
    for record, text in zip(records, texts):
        if at + len(text) > len(shown):
            break
        at += len(text)
        out.append(record.with_text(text))
    return tuple(out)


# ---- OpenAI completions `logprobs` ---------------------------------------------------------------
def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: an engine's missing value becomes null."""
    return x if math.isfinite(x) else None


def openai_logprobs(records: tuple[TokenRecord, ...], k: int, mode: str = "raw", text_start: int = 0) -> dict:
    """{tokens, token_logprobs, top_logprobs, text_offset, token_ids} as OpenAI's completions API
    returns them, in `mode` ("raw": the model's distribution; "processed": the one the token was
    drawn from). tokens[i] is the text token i added ("".join(tokens) is the completion);
    top_logprobs[i] holds the k most likely vocabulary pieces, most likely first, and the chosen
    token's piece (as OpenAI: up to k + 1 entries); text_offset[i] counts from the start of
    prompt + completion (text_start = the prompt's length). token_ids is ours (-1 where an engine
    did not say)."""
    tokens, logprobs, tops, offsets, ids, at = [], [], [], [], [], text_start
    value = (lambda c: c.raw) if mode == "raw" else (lambda c: c.final)
    for r in records:
        own = r.raw_logprob if mode == "raw" else (math.log(r.final) if r.final > 0 else math.nan)
        ranked = sorted((c for c in r.candidates if value(c) > 0), key=lambda c: -value(c))[:k]
        chosen = [c for c in r.candidates if c.token_id == r.token_id and c not in ranked]
        entries = [(c.token, math.log(value(c))) for c in ranked] + [(c.token, own) for c in chosen[:1]]
        entries.sort(key=lambda e: -e[1] if math.isfinite(e[1]) else math.inf)
        tops.append({token: _finite(lp) for token, lp in entries})
        tokens.append(r.text)
        logprobs.append(_finite(own))
        offsets.append(at)
        ids.append(r.token_id)
        at += len(r.text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets,
            "token_ids": ids}
