"""Streaming generation on transformers' own machinery.

`stream()` runs `model.generate` in a worker thread with the logits processors that
`SamplingSettings` maps to, and three stopping criteria: transformers' `stop_strings`, its
`max_time` (the per-request time limit), and `RunControl`, which ends the run within one token
when its cancel event is set (a Gradio Stop, a client disconnect, or the consumer dropping the
iterator).

Text: the worker hands over token ids, and the consumer decodes them *after the prompt's last
tokens*. SentencePiece drops the "▁" (space) of the first token of a decoded sequence, so
decoding the new ids on their own (what `TextIteratorStreamer(skip_prompt=True)` does) glues the
first word to the prompt. The rule the tests check: prompt + text == decode(all ids).

Reproducibility: the seed is applied to torch's global generator right before `generate`,
and a process-wide lock keeps two runs from interleaving their draws, so the same prompt,
settings and seed give the same text. Runs are serialised anyway on CPU (two at once would
each go at half speed).
"""
from __future__ import annotations

import os
import queue
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .loading import LoadedModel
from .remote import RemoteModel, stream_remote
from .settings import SamplingSettings, SettingsError
from .tokenizer import encode_prompt
from .tokenview import Recorder, TokenRecord, with_texts

_RUN_LOCK = threading.Lock()
MIN_NEW_TOKENS_WHEN_CUT = 64   # room kept for new tokens when the prompt alone overflows the context
STATIC_CACHE_CHOICES = ("auto", "on", "off")


def static_cache_mode() -> str:
    """NUCLEUS_STATIC_CACHE, checked (the app and the CLI call this at start-up)."""
    mode = os.environ.get("NUCLEUS_STATIC_CACHE", "").strip().lower() or "auto"     # set but empty: the default
    if mode not in STATIC_CACHE_CHOICES:
        raise SettingsError("NUCLEUS_STATIC_CACHE", f"{mode!r} (from the environment): must be one of "
                                                    f"{', '.join(STATIC_CACHE_CHOICES)}")
    return mode


def static_cache(lm: LoadedModel) -> bool:
    """Whether stream() asks generate for a static KV cache (NUCLEUS_STATIC_CACHE: auto, on, off).
    auto = on a CUDA GPU with unquantised weights: transformers then compiles the model's one-token
    forward with CUDA graphs (its own auto-compile of static caches; 367-377 tokens/s against 103-189
    for the dynamic cache at batch 1 on an H200, README "GPU suite"). On CPU it compiles nothing, so
    auto leaves it off; `on` forces it anywhere (the tests use that to run this path on CPU)."""
    mode = static_cache_mode()
    if mode != "auto":
        return mode == "on"
    return lm.device.type == "cuda" and lm.quantization == "none"


class _Worker:
    """One long-lived daemon thread that runs the generate calls, one at a time (_RUN_LOCK serialises
    runs anyway). One thread rather than one per run: torch.compile keeps its CUDA graphs per thread,
    so a new thread per run would record them again on every request. Daemon, so a server that is
    stopped mid-run exits at once."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.busy = threading.Event()
        self._start = threading.Lock()

    def submit(self, fn) -> threading.Event:
        """Run fn() (which must not raise) on the worker; the returned event is set when it returns."""
        done = threading.Event()
        with self._start:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="nucleus-generate", daemon=True)
                self.thread.start()
        self.jobs.put((fn, done))
        return done

    def _loop(self) -> None:
        while True:
            fn, done = self.jobs.get()
            self.busy.set()
            try:
                fn()
            finally:
                self.busy.clear()
                done.set()


_WORKER = _Worker()


@dataclass(frozen=True)
class Update:
    """Everything generated so far. `text` never contains a stop string or what follows it."""
    text: str
    tokens: int                 # new tokens generated so far
    seconds: float              # since the run started (prefill included)
    seed: int
    done: bool = False
    finish_reason: str | None = None   # "eos" | "length" | "stop" | "cancelled" | "time", once done
    warning: str | None = None         # e.g. max new tokens lowered, or the prompt cut to fit the context
    prompt_start: int = 0              # the model saw prompt[prompt_start:] (> 0 only when it was cut)
    records: tuple[TokenRecord, ...] = ()   # per shown token, on the last update of a run with record > 0
    max_new_tokens: int = 0            # what the run may generate: the setting, or less to fit the context
    logprobs: dict | None = None       # OpenAI-shaped log-probabilities a remote engine returned (nucleus/remote.py)

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


class _IdStream(BaseStreamer):
    """Hands the new token ids from generate's thread to the consumer; decoding happens there.
    generate() first puts the whole prompt, then each new token, then calls end()."""

    def __init__(self):
        self.ids: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_skipped = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_skipped:
            self._prompt_skipped = True
            return
        self.ids.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.ids.put(None)


class IncrementalDecoder:
    """Text of the new ids as it reads after the prompt. Decodes (anchor + window) and drops the
    anchor's own text: the anchor is a few real tokens before the window (the prompt's last ones
    at first), so the window's first word keeps its leading space. The window restarts every
    WINDOW tokens so a long run costs O(n), not O(n^2), in decoding.

    Byte-fallback tokens (<0xE4> ...) are grouped with their neighbours when decoded, so an anchor
    never starts with one: it could be the middle of a character and spoil the bytes after it."""

    ANCHOR, WINDOW = 4, 64
    _BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tok = tokenizer
        special = set(tokenizer.all_special_ids)
        self.anchor = self._anchor([i for i in prompt_ids if i not in special])
        self.window: list[int] = []
        self.done_text = ""

    def _anchor(self, ids: list[int]) -> list[int]:
        start = max(len(ids) - self.ANCHOR, 0)
        while start > 0 and self._BYTE.match(self.tok.convert_ids_to_tokens(ids[start])):
            start -= 1
        return ids[start:]

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, ids: list[int]) -> str:
        """Append new ids; return all the text so far."""
        self.window += ids
        head = self._decode(self.anchor)
        full = self._decode(self.anchor + self.window)
        # full starts with head, except when invalid byte tokens meet across the boundary and are all
        # decoded as \ufffd together: then keep what differs (replacement characters either way).
        tail = full[len(os.path.commonprefix([head, full])):]
        if len(self.window) >= self.WINDOW and not tail.endswith("\ufffd"):   # \ufffd: a split UTF-8 char
            self.done_text += tail
            self.anchor, self.window = self._anchor(self.anchor + self.window), []
            return self.done_text
        return self.done_text + tail


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """(text safe to show, whether a stop string was found). Before a stop string appears,
    any tail that could be the start of one is held back so it never flashes on screen."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[:min(hits)], True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold], False


@dataclass(frozen=True)
class Fit:
    ids: list[int]           # what the model sees: <s> + the prompt's (last) tokens
    max_new_tokens: int      # what the context leaves, at most what was asked for
    first_kept: int = 1      # index in the full ids of the first prompt token kept (1 = nothing cut)
    warning: str | None = None


def fit_context(ids: list[int], max_new_tokens: int, context: int, slack: int = 0) -> Fit:
    """Fit prompt + new tokens into the context. A prompt that fits is never cut: the number of new
    tokens is lowered to what the context leaves. Only a prompt that alone fills the context is cut,
    oldest tokens first (the BOS stays), leaving room for a few new tokens, and `slack` tokens more
    (a remote engine tokenises the cut text again, and a word cut in two may take a token more)."""
    if len(ids) + max_new_tokens <= context:
        return Fit(ids, max_new_tokens)
    if len(ids) < context:
        room = context - len(ids)
        return Fit(ids, room, warning=f"Max new tokens lowered from {max_new_tokens:,} to {room:,}: the prompt's "
                                      f"{len(ids):,} tokens leave only {room:,} of the model's {context:,}-token "
                                      "context.")
    new = min(max_new_tokens, MIN_NEW_TOKENS_WHEN_CUT, context // 2)
    keep = context - new - 1 - slack          # prompt tokens kept after the BOS
    first = len(ids) - keep
    warning = (f"The prompt is {len(ids):,} tokens, more than the model's {context:,}-token context: the model "
               f"saw only its last {keep:,} tokens (shown after […]).")
    if new < max_new_tokens:
        warning += f" Max new tokens lowered from {max_new_tokens:,} to {new:,}."
    return Fit(ids[:1] + ids[first:], new, first, warning)


def _char_offset(tokenizer, prompt: str, token_index: int) -> int:
    """Where in `prompt` the token at `token_index` (of encode_prompt's ids) starts."""
    offsets = tokenizer(prompt, split_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    return offsets[token_index][0]


def stream(lm: LoadedModel, prompt: str, settings: SamplingSettings,
           cancel: threading.Event | None = None, max_time: float | None = None,
           record: int = 0) -> Iterator[Update]:
    """Yield `Update`s as text arrives; the last one has done=True.
    max_time: seconds the run may take (prefill included); it then ends with finish_reason "time".
    record: keep a TokenRecord per token with this many top candidates (0 = off); the last
    update carries them. With a RemoteModel (nucleus/remote.py) the engine generates; `record`
    then asks it for that many log-probability alternatives per token (Update.logprobs)."""
    if not isinstance(prompt, str):
        raise SettingsError("prompt", f"expected text, got {type(prompt).__name__}")
    if max_time is not None and not max_time > 0:
        raise ValueError(f"max_time must be > 0 seconds, got {max_time!r}")
    ids = encode_prompt(lm.tokenizer, prompt)
    fit = fit_context(ids, settings.max_new_tokens, lm.context_length)
    if isinstance(lm, RemoteModel):   # an inference engine elsewhere: records from the logprobs it returns
        if fit.first_kept > 1:        # cut text is tokenised again by the engine: leave 2 tokens of slack
            fit = fit_context(ids, settings.max_new_tokens, lm.context_length, slack=2)
        start = _char_offset(lm.tokenizer, prompt, fit.first_kept) if fit.first_kept > 1 else 0
        yield from stream_remote(lm, prompt[start:], settings.replace(max_new_tokens=fit.max_new_tokens), cancel,
                                 max_time, logprobs=record, records=record, warning=fit.warning, prompt_start=start)
        return
    cancel = cancel or threading.Event()
    prompt_start = _char_offset(lm.tokenizer, prompt, fit.first_kept) if fit.first_kept > 1 else 0
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
    input_ids = torch.tensor([fit.ids], device=lm.device)                 # (1, T)
    control = RunControl(len(fit.ids), cancel)
    ids_out = _IdStream()
    eos = lm.tokenizer.eos_token_id
    gen_config = settings.replace(max_new_tokens=fit.max_new_tokens).to_generation_config(eos, warpers=False)
    gen_config.max_time = max_time
    if static_cache(lm):
        gen_config.cache_implementation = "static"
    # The warpers go in as a list (the same ones generate would build from the settings), so the
    # recorder can look between them; without a recorder the list is the same, minus the snapshots.
    warpers = settings.warpers()
    recorder = Recorder(lm.model, lm.tokenizer, warpers, record, settings.greedy) if record else None
    processors = LogitsProcessorList(recorder.processors() if recorder else [w for _, w in warpers])
    failure: list[BaseException] = []

    def work():
        try:
            torch.manual_seed(seed)
            with torch.inference_mode():
                lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                  generation_config=gen_config, streamer=ids_out, logits_processor=processors,
                                  stopping_criteria=StoppingCriteriaList([control]),
                                  tokenizer=lm.tokenizer)  # tokenizer: needed by stop_strings
        except BaseException as e:  # re-raised in the consumer's thread below
            failure.append(e)
            ids_out.end()
        finally:
            _RUN_LOCK.release()

    _RUN_LOCK.acquire()
    start = time.perf_counter()
    worker_done = _WORKER.submit(work)
    decoder = IncrementalDecoder(lm.tokenizer, fit.ids)
    raw, shown, stopped, finished, last_id, n_new = "", "", False, False, None, 0
    texts: list[str] = []      # the text each token added (complete characters only)
    try:
        while (ids := ids_out.ids.get()) is not None:
            n_new += len(ids)
            last_id = ids[-1]
            before = raw.rstrip("\ufffd")
            raw = decoder.add(ids)
            texts += [""] * (len(ids) - 1) + [raw.rstrip("\ufffd")[len(before):]]
            shown, stopped = cut_at_stop(raw.rstrip("\ufffd"), settings.stop)
            if stopped:
                break  # the token-level stop_strings criterion has usually ended the run already
            yield Update(shown, n_new, time.perf_counter() - start, seed, warning=fit.warning,
                         prompt_start=prompt_start, max_new_tokens=fit.max_new_tokens)
        finished = not stopped
    finally:
        # Stop string, or the consumer abandoned us (GeneratorExit): end the worker within one token.
        if not finished:
            cancel.set()
        worker_done.wait()
        if recorder:
            recorder.close(last_id)
    if failure:
        raise failure[0]
    if not stopped:
        shown = raw  # the run is over: release any tail held back as a possible stop-string start
    elapsed = time.perf_counter() - start
    if stopped:
        reason = "stop"
    elif n_new >= fit.max_new_tokens:
        reason = "length"
    elif last_id == eos:
        reason = "eos"
    elif cancel.is_set():
        reason = "cancelled"
    elif max_time is not None and elapsed >= max_time:
        reason = "time"
    else:
        reason = "eos"
    records = ()
    if recorder:   # the tokens whose text is shown (a stop string and what follows are not)
        keep, at = 0, 0
        while keep < len(texts) and at + len(texts[keep]) <= len(shown):
            at += len(texts[keep])
            keep += 1
        records = with_texts(recorder.records[:keep], texts[:keep])
    yield Update(shown, max(control.tokens, n_new), elapsed, seed, True, reason, fit.warning, prompt_start, records,
                 fit.max_new_tokens)


def generate(lm: LoadedModel, prompt: str, settings: SamplingSettings,
             cancel: threading.Event | None = None, max_time: float | None = None, record: int = 0) -> Update:
    """Run to completion; returns the final Update."""
    update = None
    for update in stream(lm, prompt, settings, cancel, max_time, record):
        pass
    return update
