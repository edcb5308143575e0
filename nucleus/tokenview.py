"""Token records: what the model proposed at each step, and what each sampling setting did to it.

Recorded during the same `generate` call that writes the text, never by running the model again:
- a forward hook on the output layer keeps each step's raw logits (the model's own distribution);
- `generate` gets the sampling warpers as a list (`SamplingSettings.warpers()`: transformers'
  own classes, in transformers' order) with a `_Snapshot` processor before and after each, so
  every stage is seen where it happens: after the penalties (repetition penalty, no-repeat
  n-gram), after temperature, after top-k, top-p and min-p. The last stage is the distribution
  the token was drawn from.

A step is summarised when its token is known (at the next step, or at the end): its top
candidates with their probability at every stage, which stage removed each one, and how many
tokens each stage removed in all. Cost: a few softmaxes and comparisons over the vocabulary per
token (bench/token_view.py measures it).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor

PENALTIES = "penalties"    # repetition penalty + no-repeat n-gram, applied by generate before the warpers


@dataclass(frozen=True)
class Candidate:
    token_id: int
    token: str              # the vocabulary piece, with SentencePiece's "▁" shown as a space
    raw: float              # the model's probability (softmax of its logits)
    penalized: float        # after repetition penalty and no-repeat n-gram
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


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def piece_text(piece: str) -> str:
    """A vocabulary piece as text: "▁" is a space, a byte piece of an ASCII character is that
    character ("<0x0A>" -> newline); a byte of a longer UTF-8 character keeps its <0x..> name."""
    byte = _BYTE_PIECE.match(piece)
    if byte:
        value = int(byte[1], 16)
        return chr(value) if value < 0x80 else piece
    return piece.replace("▁", " ")


class _Snapshot(LogitsProcessor):
    """A logits processor that only looks: keeps the scores of one stage of the current step."""

    def __init__(self, recorder: Recorder, stage: str):
        self.recorder, self.stage = recorder, stage

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.recorder._see(self.stage, input_ids, scores)
        return scores


class Recorder:
    """Collects a TokenRecord per generated token. Use `processors()` as generate's
    logits_processor, and `close()` (which also summarises the last step) when generate returns."""

    def __init__(self, model, tokenizer, warpers: list[tuple[str, LogitsProcessor]], top_n: int, greedy: bool):
        self.tok, self.warpers, self.top_n, self.greedy = tokenizer, warpers, top_n, greedy
        self.records: list[dict] = []      # summaries waiting for their text
        self._raw: torch.Tensor | None = None
        self._step: dict[str, torch.Tensor] = {}
        self._hook = model.get_output_embeddings().register_forward_hook(self._on_logits)

    # ---- wiring ---------------------------------------------------------------------------------
    def processors(self) -> list[LogitsProcessor]:
        out: list[LogitsProcessor] = [_Snapshot(self, PENALTIES)]
        for name, warper in self.warpers:
            out += [warper, _Snapshot(self, name)]
        return out

    def _on_logits(self, module, inputs, output) -> None:
        self._raw = output[0, -1].detach()                 # (vocab,) raw logits of the newest position

    def _see(self, stage: str, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> None:
        if stage == PENALTIES and self._step:               # a new step: the previous token is known now
            self._summarise(int(input_ids[0, -1]))
        if stage == PENALTIES:
            self._step = {"raw": self._raw}
        self._step[stage] = scores[0]                       # warpers return new tensors: no copy needed

    def close(self, last_token: int | None) -> None:
        self._hook.remove()
        if self._step and last_token is not None:
            self._summarise(last_token)
        self._step = {}

    # ---- one step -------------------------------------------------------------------------------
    def _summarise(self, chosen: int) -> None:
        step, self._step = self._step, {}
        stages = [PENALTIES] + [name for name, _ in self.warpers]
        raw = step["raw"].float()
        raw_lp = torch.log_softmax(raw, -1)
        final_scores = step[stages[-1]].float()
        final_p = torch.softmax(final_scores, -1)
        pen_p = torch.softmax(step[PENALTIES].float(), -1)
        temp_p = torch.softmax(step["temperature"].float(), -1) if "temperature" in step else pen_p
        # removed: -inf now, finite before (the raw logits count as the stage before the penalties)
        removed, before = {}, torch.isinf(raw)
        gone: dict[str, torch.Tensor] = {}
        for name in stages:
            now = torch.isinf(step[name])
            gone[name] = now & ~before
            removed[name] = int(gone[name].sum())
            before = now
        n = min(self.top_n, raw.numel())
        ids = dict.fromkeys(raw.topk(n).indices.tolist() + final_scores.topk(n).indices.tolist() + [chosen])
        candidates = []
        for i in ids:
            by = next((name for name in stages if gone[name][i]), None)
            candidates.append(Candidate(i, piece_text(self.tok.convert_ids_to_tokens(i)),
                                        float(raw_lp[i].exp()), float(pen_p[i]), float(temp_p[i]),
                                        float(final_p[i]), by))
        candidates.sort(key=lambda c: -c.raw)
        self.records.append(dict(token_id=chosen, raw_logprob=float(raw_lp[chosen]), final=float(final_p[chosen]),
                                 candidates=tuple(candidates), removed={k: v for k, v in removed.items() if v},
                                 kept=int((~torch.isinf(final_scores)).sum()), greedy=self.greedy))


def with_texts(records: list[dict], texts: list[str]) -> tuple[TokenRecord, ...]:
    """Attach each token's text (from the stream's decoding) to its summary."""
    return tuple(TokenRecord(text=t, **r) for r, t in zip(records, texts))


# ---- OpenAI completions `logprobs` ---------------------------------------------------------------
MAX_LOGPROBS = 20     # as OpenAI's completions API


def check_logprobs(value) -> int:
    """The API's and the CLI's `logprobs`: alternatives per token, 0 (off) to 20."""
    from .settings import SettingsError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 0 <= value <= MAX_LOGPROBS:
        raise SettingsError("logprobs", f"expected a whole number from 0 to {MAX_LOGPROBS}, got {value!r}")
    return int(value)


def openai_logprobs(records: tuple[TokenRecord, ...], k: int, text_start: int = 0) -> dict:
    """{tokens, token_logprobs, top_logprobs, text_offset} as OpenAI's completions API returns
    them: the model's own (raw) log-probabilities, the top k alternatives per token."""
    tokens, logprobs, tops, offsets, at = [], [], [], [], text_start
    for r in records:
        tokens.append(r.text)
        logprobs.append(r.raw_logprob)
        best = sorted(r.candidates, key=lambda c: -c.raw)[:k]
        tops.append({c.token: round(math.log(max(c.raw, 1e-45)), 6) for c in best})   # 1e-45: no -inf in JSON
        offsets.append(at)
        at += len(r.text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}
