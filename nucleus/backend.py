"""The floor every backend stands on: the `Backend` interface, the `Update` it yields, and the rules
that must mean the same whoever generates: the context fit, the stop-string cut, finish reasons.

    backend = nucleus.load("models/nucleus-nano")         # a LocalModel (nucleus/local.py), or
    backend = nucleus.remote.connect("http://host:8000/v1")  # a RemoteModel (nucleus/remote.py)
    for update in backend.stream(prompt, settings, record=10):
        ...                                                 # update.text grows; the last has done=True

`Backend.stream` checks the request, fits the prompt to the context and draws the seed, then hands
a `Request` to the backend's own `_generate`. So the page, the API and the CLI call one method and
never ask which kind of backend they hold; what a backend can do is in its `supports`.

Conventions (the API documents them; every backend follows them):
- finish_reason: "eos" (the model ended the text; also when that happens on the last allowed token),
  "length" (max new tokens), "stop" (a stop string; the text ends before it), "cancelled", "time".
- logprobs_mode: "raw" = the model's own distribution (what vLLM and llama.cpp's server return by
  default), "processed" = the distribution the token was drawn from, after every sampling setting.
- text_offset (OpenAI's): where each token's text starts in prompt + completion, counted in
  characters of the prompt as given (a cut prompt still counts from its first character).
"""
from __future__ import annotations

import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .settings import SamplingSettings, SettingsError

FINISH_REASONS = ("eos", "length", "stop", "cancelled", "time")
LOGPROBS_MODES = ("raw", "processed")
MAX_LOGPROBS = 20                # alternatives per token, as OpenAI's completions API
MIN_NEW_TOKENS_WHEN_CUT = 64     # room kept for new tokens when the prompt alone overflows the context


class ModelLoadError(RuntimeError):
    """A model could not be loaded or reached: one sentence a user can act on."""


@dataclass(frozen=True)
class Update:
    """Everything generated so far. `text` never contains a stop string or what follows it."""
    text: str
    tokens: int                 # new tokens generated so far
    seconds: float              # since the run started (prefill included)
    seed: int
    done: bool = False
    finish_reason: str | None = None   # one of FINISH_REASONS, once done
    warning: str | None = None         # e.g. max new tokens lowered, or the prompt cut to fit the context
    prompt_start: int = 0              # the model saw prompt[prompt_start:] (> 0 only when it was cut)
    records: tuple = ()                # TokenRecords (nucleus/tokenview.py), on the last update, if asked
    max_new_tokens: int = 0            # what the run may generate: the setting, or less to fit the context
    logprobs: dict | None = None       # OpenAI-shaped, on the last update, if asked

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Supports:
    """What a backend can give besides text."""
    logprobs: bool = True              # per-token log-probabilities with alternatives (the token view)
    stages: bool = True                # the probabilities after each sampling stage (the inspector's columns)
    processed_logprobs: bool = True    # logprobs_mode="processed"
    chat: bool = False                 # takes chat messages (a chat template, or an engine's chat endpoint)


@dataclass(frozen=True)
class Request:
    """One checked run, as `Backend.stream` hands it to `_generate`."""
    prompt: str                 # the text the model sees (the prompt's end, when it was cut)
    ids: list[int]              # its token ids, <s> first
    settings: SamplingSettings  # with max_new_tokens lowered to what the context leaves
    seed: int
    cancel: threading.Event
    deadline: float | None      # time.monotonic() at which the run ends with "time"
    started: float              # time.perf_counter() at the start
    record: int = 0             # candidates per token kept for the page's token view (0 = none)
    logprobs: int = 0           # alternatives per token for the API (0 = none)
    logprobs_mode: str = "raw"
    warning: str | None = None
    prompt_start: int = 0
    text_start: int = 0         # len(the whole prompt): where the completion starts (text_offset)
    messages: tuple = ()        # a chat run: the checked messages (`prompt` is then the template's text)

    def update(self, text: str, tokens: int, **done) -> Update:
        return Update(text, tokens, time.perf_counter() - self.started, self.seed, warning=self.warning,
                      prompt_start=self.prompt_start, max_new_tokens=self.settings.max_new_tokens, **done)


class Backend(ABC):
    """A model that generates: local weights (nucleus/local.py) or an inference engine
    (nucleus/remote.py). Subclasses set the attributes below and implement `_generate`."""

    name: str                  # short label, e.g. "nucleus-nano"
    source: str                # what transformers would load: a Hub id or a folder
    tokenizer: object          # the model's tokenizer (prompt meter, context fit)
    engine: str | None         # the inference engine's name, None for local weights
    weights: str               # as served: "none" (the stored dtype), "int8", "int4", or "engine"
    supports = Supports()
    fit_slack = 0              # extra tokens left free when a prompt is cut (see fit_context)

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def _generate(self, req: Request) -> Iterator[Update]:
        """Yield Updates; the last has done=True, a finish reason and, if asked, records and logprobs."""

    def check(self, settings: SamplingSettings, logprobs: int = 0, logprobs_mode: str = "raw") -> None:
        """SettingsError for what this backend cannot honour (before anything runs)."""
        if logprobs and not self.supports.logprobs:
            raise SettingsError("logprobs", f"{self.describe_engine()} does not return log-probabilities")
        if logprobs_mode == "processed" and not self.supports.processed_logprobs:
            raise SettingsError("logprobs_mode", f"{self.describe_engine()} returns the model's own (raw) "
                                                 "log-probabilities only; use logprobs_mode 'raw'")

    def describe_engine(self) -> str:
        return self.engine or "this model"

    def stream(self, prompt: str, settings: SamplingSettings, cancel: threading.Event | None = None,
               max_time: float | None = None, record: int = 0, logprobs: int = 0,
               logprobs_mode: str = "raw") -> Iterator[Update]:
        """Yield `Update`s as text arrives; the last one has done=True.
        max_time: seconds the run may take (prefill included); it then ends with finish_reason "time".
        record: keep a TokenRecord per shown token with this many candidates (the last update has them).
        logprobs: per token that many alternatives, OpenAI-shaped, in `logprobs_mode` (the last update)."""
        yield from self._run(self.request(prompt, settings, cancel, max_time, record, logprobs, logprobs_mode))

    def stream_chat(self, messages: list[dict], settings: SamplingSettings, cancel: threading.Event | None = None,
                    max_time: float | None = None, record: int = 0, logprobs: int = 0,
                    logprobs_mode: str = "raw") -> Iterator[Update]:
        """`stream` for OpenAI-shaped chat messages (nucleus/chat.py): the reply to the last one.
        text_offset then counts from the start of the template's text (chat_prompt(...).text)."""
        chat = self.chat_prompt(messages, settings.max_new_tokens)
        req = self.request(chat.text, settings, cancel, max_time, record, logprobs, logprobs_mode, chat)
        yield from self._run(req)

    def chat_prompt(self, messages: list[dict], max_new_tokens: int):
        """The conversation as the model will see it (a ChatPrompt); SettingsError for a base model or
        bad messages. A backend whose engine applies the template itself overrides this."""
        from .chat import render

        return render(self.tokenizer, messages, self.context_length, max_new_tokens, self.name)

    def score(self, text: str, top: int = 5):
        """Every token of `text` with its log-probability, rank and alternatives (nucleus/score.py's
        Scored); SettingsError where this backend cannot."""
        raise SettingsError("text", f"{self.describe_engine()} cannot score text here: Nucleus scores with local "
                                    "weights only so far (serve the model in this process to score)")

    def logit_lens(self, text: str, position: int, top: int = 5) -> dict:
        """What each layer would predict for one token of `text` (nucleus/score.py)."""
        raise SettingsError("position", f"{self.describe_engine()} does not show its layers: the logit lens needs "
                                        "the weights in this process")

    def _run(self, req: Request) -> Iterator[Update]:
        for update in self._generate(req):
            if update.done:      # the records serve the page (record) and the API's logprobs
                from .tokenview import openai_logprobs

                lp, warning = None, update.warning
                if req.logprobs and (update.records or not update.tokens):
                    lp = openai_logprobs(update.records, req.logprobs, req.logprobs_mode, req.text_start)
                elif req.logprobs:    # an engine that ignored the request
                    warning = " ".join(filter(None, [warning, f"{self.describe_engine()} returned no "
                                                              "log-probabilities for this run."]))
                update = replace(update, records=update.records if req.record else (), logprobs=lp, warning=warning)
            yield update

    def request(self, prompt, settings, cancel=None, max_time=None, record=0, logprobs=0,
                logprobs_mode="raw", chat=None) -> Request:
        """The checked Request: values validated, the prompt fitted, the seed drawn. `chat`: a
        ChatPrompt whose text is `prompt` (its ids are used as they are; it fits the context)."""
        started = time.perf_counter()
        if not isinstance(prompt, str):
            raise SettingsError("prompt", f"expected text, got {type(prompt).__name__}")
        if max_time is not None and not max_time > 0:
            raise ValueError(f"max_time must be > 0 seconds, got {max_time!r}")
        logprobs, mode = check_logprobs(logprobs), check_logprobs_mode(logprobs_mode)
        self.check(settings, logprobs, mode)
        from .tokenizer import encode_prompt

        ids = chat.ids if chat else encode_prompt(self.tokenizer, prompt)
        fit = fit_context(ids, settings.max_new_tokens, self.context_length, self.fit_slack)
        start = char_offset(self.tokenizer, prompt, fit.first_kept) if fit.first_kept > 1 else 0
        seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
        warning = " ".join(filter(None, [chat.warning if chat else None, fit.warning])) or None
        return Request(prompt[start:], fit.ids, settings.replace(max_new_tokens=fit.max_new_tokens), seed,
                       cancel or threading.Event(), None if max_time is None else time.monotonic() + max_time,
                       started, record, logprobs, mode, warning, start, len(prompt),
                       tuple(chat.messages) if chat else ())


def generate(backend: Backend, prompt: str, settings: SamplingSettings, cancel: threading.Event | None = None,
             max_time: float | None = None, record: int = 0, logprobs: int = 0,
             logprobs_mode: str = "raw") -> Update:
    """Run to completion; returns the final Update."""
    update = None
    for update in backend.stream(prompt, settings, cancel, max_time, record, logprobs, logprobs_mode):
        pass
    return update


def stream(backend: Backend, prompt: str, settings: SamplingSettings, cancel: threading.Event | None = None,
           max_time: float | None = None, record: int = 0, logprobs: int = 0,
           logprobs_mode: str = "raw") -> Iterator[Update]:
    """`backend.stream(...)`, as a function."""
    return backend.stream(prompt, settings, cancel, max_time, record, logprobs, logprobs_mode)


# ---- checks of the API's and the CLI's extra values ------------------------------------------
def check_logprobs(value) -> int:
    """`logprobs`: alternatives per token, 0 (off) to 20."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 0 <= value <= MAX_LOGPROBS:
        raise SettingsError("logprobs", f"expected a whole number from 0 to {MAX_LOGPROBS}, got {value!r}")
    return int(value)


def check_logprobs_mode(value) -> str:
    if value not in LOGPROBS_MODES:
        raise SettingsError("logprobs_mode", f"expected one of {', '.join(LOGPROBS_MODES)}, got {value!r}")
    return value


# ---- text rules shared by every backend -------------------------------------------------------
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


def char_offset(tokenizer, prompt: str, token_index: int) -> int:
    """Where in `prompt` the token at `token_index` (of encode_prompt's ids) starts."""
    offsets = tokenizer(prompt, split_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    return offsets[token_index][0]


__all__ = ["Backend", "FINISH_REASONS", "Fit", "LOGPROBS_MODES", "ModelLoadError", "Request", "Supports", "Update", "check_logprobs",
           "check_logprobs_mode", "cut_at_stop", "fit_context", "generate", "stream"]
