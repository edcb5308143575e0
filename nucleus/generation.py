"""Streaming generation on transformers' own machinery.

`stream()` runs `model.generate` in a worker thread with a `TextIteratorStreamer`, the logits
processors that `SamplingSettings` maps to, and two stopping criteria: transformers'
`stop_strings` and `RunControl`, which ends the run within one token when its cancel event is
set (a Gradio Stop, a client disconnect, or the consumer dropping the iterator).

Reproducibility: the seed is applied to torch's global generator right before `generate`,
and a process-wide lock keeps two runs from interleaving their draws, so the same prompt,
settings and seed give the same text. Runs are serialised anyway on CPU (two at once would
each go at half speed).
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .loading import LoadedModel
from .settings import SamplingSettings, SettingsError
from .tokenizer import encode_prompt

_RUN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Update:
    """Everything generated so far. `text` never contains a stop string or what follows it."""
    text: str
    tokens: int                 # new tokens generated so far
    seconds: float              # since the run started (prefill included)
    seed: int
    done: bool = False
    finish_reason: str | None = None   # "eos" | "length" | "stop" | "cancelled", once done
    warning: str | None = None         # e.g. the prompt was cut to fit the context

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class RunControl(StoppingCriteria):
    """Stopping criterion that (1) ends generation when `cancel` is set, checked before every
    new token, and (2) counts tokens, for reporting and for the stop-within-one-token test."""

    def __init__(self, prompt_len: int, cancel: threading.Event):
        self.prompt_len, self.cancel = prompt_len, cancel
        self.tokens = 0

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.tokens = input_ids.shape[1] - self.prompt_len          # input_ids: (B, T)
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool,
                          device=input_ids.device)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """(text safe to show, whether a stop string was found). Before a stop string appears,
    any tail that could be the start of one is held back so it never flashes on screen."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[:min(hits)], True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold], False


def fit_context(ids: list[int], max_new_tokens: int, context: int) -> tuple[list[int], str | None]:
    """Keep the prompt's last tokens so prompt + max_new_tokens fits the context (BOS kept)."""
    if max_new_tokens >= context:
        raise SettingsError("max_new_tokens", f"{max_new_tokens} leaves no room for the prompt in this "
                                              f"model's context of {context} tokens; use at most {context - 1}")
    room = context - max_new_tokens
    if len(ids) <= room:
        return ids, None
    kept = ids[:1] + ids[len(ids) - (room - 1):]
    return kept, (f"The prompt was {len(ids)} tokens; it was cut to its last {room} to leave room for "
                  f"{max_new_tokens} new tokens in the {context}-token context.")


def stream(lm: LoadedModel, prompt: str, settings: SamplingSettings,
           cancel: threading.Event | None = None) -> Iterator[Update]:
    """Yield `Update`s as text arrives; the last one has done=True."""
    if not isinstance(prompt, str):
        raise SettingsError("prompt", f"expected text, got {type(prompt).__name__}")
    cancel = cancel or threading.Event()
    ids, warning = fit_context(encode_prompt(lm.tokenizer, prompt), settings.max_new_tokens,
                               lm.context_length)
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
    input_ids = torch.tensor([ids], device=lm.device)                     # (1, T)
    control = RunControl(len(ids), cancel)
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
    gen_config = settings.to_generation_config(lm.tokenizer.eos_token_id)
    failure: list[BaseException] = []

    def work():
        try:
            torch.manual_seed(seed)
            with torch.inference_mode():
                lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  generation_config=gen_config, streamer=streamer,
                                  stopping_criteria=StoppingCriteriaList([control]),
                                  tokenizer=lm.tokenizer)  # tokenizer: needed by stop_strings
        except BaseException as e:  # re-raised in the consumer's thread below
            failure.append(e)
            streamer.end()
        finally:
            _RUN_LOCK.release()

    _RUN_LOCK.acquire()
    start = time.perf_counter()
    worker = threading.Thread(target=work, name="nucleus-generate", daemon=True)
    worker.start()
    raw, shown, stopped, finished = "", "", False, False
    try:
        for chunk in streamer:
            raw += chunk
            shown, stopped = cut_at_stop(raw, settings.stop)
            if stopped:
                break  # the token-level stop_strings criterion has usually ended the run already
            yield Update(shown, control.tokens, time.perf_counter() - start, seed, warning=warning)
        finished = not stopped
    finally:
        # Stop string, or the consumer abandoned us (GeneratorExit): end the worker within one token.
        if not finished:
            cancel.set()
        worker.join()
    if failure:
        raise failure[0]
    if not stopped:
        shown = raw  # the run is over: release any tail held back as a possible stop-string start
    reason = ("stop" if stopped else "cancelled" if cancel.is_set()
              else "length" if control.tokens >= settings.max_new_tokens else "eos")
    yield Update(shown, control.tokens, time.perf_counter() - start, seed, True, reason, warning)


def generate(lm: LoadedModel, prompt: str, settings: SamplingSettings) -> Update:
    """Run to completion; returns the final Update."""
    update = None
    for update in stream(lm, prompt, settings):
        pass
    return update
