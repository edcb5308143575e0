"""Log-probabilities as inference engines stream them, turned into our TokenRecords.

Engines send them in one of two shapes (nucleus/remote.py asks for them):
- OpenAI's legacy completions lists (vLLM, SGLang, llama-cpp-python): {tokens, token_logprobs,
  top_logprobs: [{text: logprob}], text_offset};
- per-token objects (llama.cpp's `llama-server`): {content: [{id, token, logprob,
  top_logprobs: [{id, token, logprob}]}]}.
`Collected` gathers either, chunk by chunk; `records` gives a TokenRecord per shown token with
the model's column only (an engine does not say what each sampling setting did: the stages are
NaN). The API's `logprobs` are then made from these records like a local run's
(nucleus/tokenview.py), so both kinds of backend answer in one shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .tokenview import Candidate, TokenRecord, piece_text

NAN = float("nan")


@dataclass
class Collected:
    """Per generated token, as the engine reported it: its text, id (llama.cpp only), log-probability
    and alternatives."""
    texts: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    tops: list = field(default_factory=list)

    def add(self, got) -> None:
        """One chunk's `logprobs`, in either shape; anything else is ignored."""
        if not isinstance(got, dict):
            return
        if isinstance(got.get("content"), list):
            for item in got["content"]:
                if isinstance(item, dict):
                    tops = item.get("top_logprobs") or []
                    self._append(str(item.get("token", "")), item.get("id"), item.get("logprob"),
                                 {str(t.get("token", "")): t.get("logprob") for t in tops if isinstance(t, dict)})
            return
        texts, lps, tops = got.get("tokens") or [], got.get("token_logprobs") or [], got.get("top_logprobs") or []
        for i, text in enumerate(texts):
            self._append(str(text), None, lps[i] if i < len(lps) else None, tops[i] if i < len(tops) else None)

    def _append(self, text, tid, logprob, tops) -> None:
        self.texts.append(text)
        self.ids.append(tid if isinstance(tid, int) and not isinstance(tid, bool) else -1)
        self.logprobs.append(float(logprob) if isinstance(logprob, (int, float)) else NAN)
        self.tops.append(tops if isinstance(tops, dict) else {})

    def records(self, shown: str, greedy: bool, tokenizer=None, cut: bool = False) -> tuple[TokenRecord, ...]:
        """TokenRecords for the tokens whose text is shown. A token's text: where the engine gives
        token ids (llama.cpp's server), the token's own piece from `tokenizer`, because llama.cpp
        reports streamed chunks, not tokens: with a stop string pending it holds text back and
        shifts it ("ose", "-" came as "", "ose-") and rewrites the token it cut (" Key" as " K");
        a byte-fallback piece keeps the engine's text (the whole character).
        `cut`: the run ended on a stop string; as locally, only whole tokens before it are kept."""
        out, at = [], 0
        for text, tid, chosen_lp, tops in zip(self.texts, self.ids, self.logprobs, self.tops):
            piece = tokenizer.convert_ids_to_tokens(tid) if tokenizer is not None and tid >= 0 else None
            text = piece_text(piece) if piece and not piece.startswith("<0x") else text
            if at >= len(shown) or (cut and at + len(text) > len(shown)):
                break
            at += len(text)
            out.append(_record(text, tid, chosen_lp, tops, greedy))
        return tuple(out)


def _record(text: str, tid: int, chosen_lp: float, tops: dict, greedy: bool) -> TokenRecord:
    cands: dict[str, Candidate] = {}
    for piece, value in tops.items():
        if isinstance(value, (int, float)) and piece not in cands:
            # the chosen one carries the record's id; the others an id no record has
            cands[piece] = Candidate(tid if piece == text else -2, piece, math.exp(value), NAN, NAN, NAN, None)
    if text not in cands:
        cands[text] = Candidate(tid, text, math.exp(chosen_lp) if chosen_lp == chosen_lp else NAN, NAN, NAN, NAN,
                                None)
    ordered = tuple(sorted(cands.values(), key=lambda c: -(c.raw if c.raw == c.raw else -1)))
    return TokenRecord(tid, text, chosen_lp, NAN, ordered, {}, 0, greedy)
