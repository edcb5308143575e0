"""Score a text: what the model thinks of each of its tokens, and what each layer would predict.

    result = lm.score("### Recipe: Soup\\n### Ingredients\\n", top=5)
    result.perplexity, result.ranks, result.token_logprobs
    lens = lm.logit_lens("### Recipe: Soup\\n", position=3)

Conventions (the API's /score returns them under these names):
- tokens: every token of the text after <s>; token_logprobs[i] is log p(token i | <s> and the tokens
  before it), natural log, from the model's own distribution (raw: no sampling setting applies);
- ranks[i]: 1 + how many tokens the model found more likely than token i (1 = its top choice), as
  GLTR counts them; rank buckets for colour: top 10, top 100, top 1000, beyond;
- perplexity: exp of the mean negative log-likelihood over the scored tokens;
- a text longer than the context is cut as generation cuts a prompt: its last tokens are scored,
  prompt_start says where in the text they begin, and a warning says so.
The logit lens applies the model's final norm and output layer to the hidden state after each
layer (layer 0: the embeddings); its last layer is the model's own distribution.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .settings import SettingsError

MAX_TOP = 20
BUCKETS = ((10, "top 10"), (100, "top 100"), (1000, "top 1000"), (None, "beyond"))


@dataclass(frozen=True)
class Scored:
    tokens: list[str]
    token_ids: list[int]
    token_logprobs: list[float]
    ranks: list[int]
    top_logprobs: list[dict]          # per token: {token text: logprob} of the `top` most likely
    text_offset: list[int]            # where each token's text starts in the text as given
    perplexity: float
    prompt_start: int = 0
    warning: str | None = None
    surprising: list[int] = field(default_factory=list)    # indices of the least likely tokens, worst first

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "token_ids": self.token_ids, "token_logprobs": self.token_logprobs,
                "ranks": self.ranks, "top_logprobs": self.top_logprobs, "text_offset": self.text_offset,
                "perplexity": self.perplexity, "prompt_start": self.prompt_start, "warning": self.warning,
                "surprising": self.surprising}


def bucket(rank: int) -> str:
    return next(label for limit, label in BUCKETS if limit is None or rank <= limit)


def check_top(top) -> int:
    if isinstance(top, bool) or not isinstance(top, (int, float)) or top != int(top) or not 0 <= top <= MAX_TOP:
        raise SettingsError("top", f"expected a whole number from 0 to {MAX_TOP}, got {top!r}")
    return int(top)


def _pieces(tokenizer, text: str):
    """(ids without <s>, the text each token covers, where each starts) of `text`; a user's
    "<s>" stays text, as in a prompt."""
    enc = tokenizer(text, split_special_tokens=True, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [text[a:b] for a, b in enc["offset_mapping"]], [a for a, _ in enc["offset_mapping"]]


def score(model, tokenizer, text: str, top: int = 5, context: int | None = None, surprising: int = 10) -> Scored:
    """Every token of `text` under `model` (see the module's conventions)."""
    if not isinstance(text, str) or not text.strip():
        raise SettingsError("text", "give some text to score")
    top = check_top(top)
    context = context or int(model.config.max_position_embeddings)
    ids, spans, starts = _pieces(tokenizer, text)
    first, warning = 0, None
    if len(ids) + 1 > context:                      # keep the end, as generation keeps a prompt's end
        first = len(ids) - (context - 1)
        warning = (f"The text is {len(ids):,} tokens, more than the model's {context:,}-token context: only its "
                   f"last {context - 1:,} tokens were scored.")
    ids, spans, starts = ids[first:], spans[first:], starts[first:]
    x = torch.tensor([[tokenizer.bos_token_id] + ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logp = torch.log_softmax(model(x, use_cache=False).logits[0, :-1].float(), dim=-1)   # (n, vocab)
    target = x[0, 1:]
    chosen = logp.gather(-1, target[:, None])[:, 0]                                           # (n,)
    ranks = ((logp > chosen[:, None]).sum(-1) + 1).tolist()
    tops = []
    if top:
        values, indices = logp.topk(top, dim=-1)
        for vs, ix in zip(values.tolist(), indices.tolist()):
            tops.append({_token_text(tokenizer, i): v for i, v in zip(ix, vs)})
    lps = chosen.tolist()
    offset = starts[0] if starts else 0
    worst = sorted(range(len(lps)), key=lambda i: lps[i])[:surprising]
    return Scored([_token_text(tokenizer, i) for i in ids], ids, lps, ranks, tops, starts,
                  math.exp(-sum(lps) / len(lps)), offset if first else 0, warning, worst)


def _token_text(tokenizer, token_id: int) -> str:
    """A token's own text: "▁" as a space, a byte piece of an ASCII character as that character
    (<0x0A> is a newline); a byte of a longer UTF-8 character stays written as <0xNN>."""
    piece = str(tokenizer.convert_ids_to_tokens(token_id))
    byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if byte and int(byte[1], 16) < 0x80:
        return chr(int(byte[1], 16))
    return piece.replace("\u2581", " ")


def logit_lens(model, tokenizer, text: str, position: int, top: int = 5) -> dict:
    """What each layer would predict for token `position` of `text` (0 = the first token after <s>):
    per layer the `top` candidates with probabilities, the chosen token's probability and rank, and
    the first layer at which it is the top candidate (None if never)."""
    ids, _, _ = _pieces(tokenizer, text)
    context = int(model.config.max_position_embeddings)
    ids = ids[max(0, len(ids) - (context - 1)):]
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < len(ids):
        raise SettingsError("position", f"expected a token index from 0 to {len(ids) - 1}, got {position!r}")
    top = check_top(top) or 5
    x = torch.tensor([[tokenizer.bos_token_id] + ids[:position + 1]], device=next(model.parameters()).device)
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True, use_cache=False).hidden_states
        # transformers gives the embeddings, each layer's output, and for the last layer its output
        # after the final norm: so the norm is applied to every entry but the last
        states = [model.model.norm(h[0, -2]) for h in hidden[:-1]] + [hidden[-1][0, -2]]
        probs = torch.softmax(model.lm_head(torch.stack(states)).float(), dim=-1)           # (layers + 1, vocab)
    target = ids[position]
    layers, first_top = [], None
    for layer, p in enumerate(probs):
        values, indices = p.topk(top)
        rank = int((p > p[target]).sum()) + 1
        if rank == 1 and first_top is None:
            first_top = layer
        layers.append({"layer": layer, "top": [(_token_text(tokenizer, int(i)), float(v)) for i, v in
                                                zip(indices, values)],
                       "probability": float(p[target]), "rank": rank})
    return {"token": _token_text(tokenizer, target), "position": position, "layers": layers,
            "first_top_layer": first_top}


__all__ = ["BUCKETS", "MAX_TOP", "Scored", "bucket", "check_top", "logit_lens", "score"]
