"""SamplingSettings: the one validated description of how to sample, shared by UI, API and CLI.

Field names are Hugging Face's so `to_generation_config()` is a 1:1 mapping. Validation lives
here and only here: a value out of range or of the wrong type raises `SettingsError` naming the
field and what is allowed. Nothing is clamped or coerced beyond exact conversions (5.0 -> 5).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import GenerationConfig

MAX_NEW_TOKENS = 4096        # hard upper bound; the model's context may allow fewer (checked at run time)
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**32 - 1
PENALTIES = "penalties"      # the stage of the repetition penalty and the no-repeat n-gram rule

# field -> (kind, low, high, low_inclusive, help). The UI builds its sliders from this table.
BOUNDS: dict[str, tuple[type, float, float, bool, str]] = {
    "temperature": (float, 0.0, 2.0, True, "0 = greedy: the top token after the repetition penalty and "
                                            "the n-gram rule"),
    "top_p": (float, 0.0, 1.0, False, "nucleus sampling: keep the smallest set of tokens with this much probability"),
    "top_k": (int, 0, 1000, True, "keep only the k most likely tokens; 0 = off"),
    "min_p": (float, 0.0, 1.0, True, "drop tokens below min_p x the top token's probability; 0 = off"),
    "repetition_penalty": (float, 1.0, 2.0, True, "1 = off; the Nucleus card recommends about 1.5"),
    "no_repeat_ngram_size": (int, 0, 20, True, "forbid repeating any n-gram of this size; 0 = off"),
    "max_new_tokens": (int, 1, MAX_NEW_TOKENS, True, "tokens to generate, at most what the context leaves"),
    "seed": (int, 0, MAX_SEED, True, "same prompt + settings + seed -> same text; empty = random"),
}


class SettingsError(ValueError):
    """A setting is out of range or of the wrong type. `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def allowed(name: str) -> str:
    """Human-readable range of a numeric field, e.g. '0 <= temperature <= 2'."""
    kind, lo, hi, lo_incl, _ = BOUNDS[name]
    fmt = (lambda v: f"{v:g}") if kind is float else (lambda v: f"{int(v)}")
    return f"{fmt(lo)} {'<=' if lo_incl else '<'} {name} <= {fmt(hi)} ({kind.__name__})"


def _check_number(name: str, value: Any) -> int | float:
    kind, lo, hi, lo_incl, _ = BOUNDS[name]
    # bool is an int subclass in Python; True as a temperature is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(name, f"expected a number, got {type(value).__name__} {value!r}; allowed: {allowed(name)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(name, f"{value!r} is not a finite number; allowed: {allowed(name)}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise SettingsError(name, f"expected a whole number, got {value!r}; allowed: {allowed(name)}")
        value = int(value)
    else:
        value = float(value)
    if value > hi or value < lo or (value == lo and not lo_incl):
        raise SettingsError(name, f"{value!r} is out of range; allowed: {allowed(name)}")
    return value


def _check_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise SettingsError("stop", f"expected a list of strings, got {type(value).__name__}")
    if len(value) > MAX_STOP_STRINGS:
        raise SettingsError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(value)}")
    for s in value:
        if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
            raise SettingsError("stop", f"each stop string must be text of 1 to {MAX_STOP_CHARS} characters, got {s!r}")
    return tuple(value)


def unescape(text: str) -> str:
    """Turn the two-character sequences \\n and \\t typed in a shell into newline and tab;
    everything else (unicode included) is kept as typed."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), text)


def parse_seed(value) -> int | None:
    """The seed as people type it (the page's seed box, a share link): empty = None (a new random
    seed each run), else a whole number written in digits, 0 to MAX_SEED; "1e3" or "4.0" are
    refused, in the box and in a link alike. Numbers (the API) are checked by SamplingSettings."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise SettingsError("seed", f"expected a whole number from 0 to {MAX_SEED} written in digits, or "
                                        f"nothing (random), got {text!r}")
        value = int(text)
    return _check_number("seed", value)


def parse_stop_text(text: str | None) -> list[str]:
    """Stop strings from a text box: one per line, with \\n typed for a newline."""
    return [unescape(line) for line in (text or "").splitlines() if line]


def format_stop_text(stops) -> str:
    """Inverse of parse_stop_text, for filling the text box from a preset."""
    return "\n".join(s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t") for s in stops)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.5
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 200
    stop: tuple[str, ...] = field(default=())
    seed: int | None = None           # None = a fresh random seed per run (reported afterwards)

    def __post_init__(self):
        for name in BOUNDS:
            value = getattr(self, name)
            if name == "seed" and value is None:
                continue
            object.__setattr__(self, name, _check_number(name, value))
        object.__setattr__(self, "stop", _check_stop(self.stop))

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: SamplingSettings | None = None) -> SamplingSettings:
        """Settings from a mapping (API payload, preset file); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SettingsError(unknown[0], f"unknown setting; known settings are {sorted(names)}")
        return dataclasses.replace(base or cls(), **dict(values))

    def replace(self, **changes) -> SamplingSettings:
        return SamplingSettings.from_dict(changes, base=self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d

    # ---- mapping onto transformers ---------------------------------------------------------
    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_generation_config(self, eos_token_id: int, pad_token_id: int | None = None) -> GenerationConfig:
        """The equivalent GenerationConfig (for transformers' generate: the code panel's snippet,
        transformers serve, and the tests' reference). Greedy leaves the sampling warpers unset
        (they would be ignored and warned about); penalties apply in both modes."""
        kw: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
            stop_strings=list(self.stop) or None,
            do_sample=not self.greedy,
        )
        if not self.greedy:
            # top_k=0 must be explicit: transformers otherwise fills in its default of 50.
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p or None)
        return GenerationConfig(**kw)

    def chain(self) -> list[tuple[str, Any]]:
        """(stage, processor) pairs: the processors transformers' generate builds from
        `to_generation_config()`, in its order: the penalties (repetition penalty, then no-repeat
        n-gram; in greedy runs too), then, when sampling, temperature, top-k, top-p and min-p. The
        same classes with the same arguments, so the numbers are transformers' own
        (tests/test_decode.py checks the scores against generate's); top-p is transformers' class
        with a faster sort on CPU (nucleus/topp.py says why and where it differs: ties at the cut)."""
        from transformers import (MinPLogitsWarper, NoRepeatNGramLogitsProcessor,
                                  RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper)

        from .topp import ValueSortTopP
        out: list[tuple[str, Any]] = []
        if self.repetition_penalty != 1.0:
            out.append((PENALTIES, RepetitionPenaltyLogitsProcessor(self.repetition_penalty)))
        if self.no_repeat_ngram_size:
            out.append((PENALTIES, NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size)))
        if self.greedy:
            return out
        if self.temperature != 1.0:
            out.append(("temperature", TemperatureLogitsWarper(self.temperature)))
        if self.top_k:
            out.append(("top-k", TopKLogitsWarper(self.top_k)))
        if self.top_p < 1.0:
            out.append(("top-p", ValueSortTopP(self.top_p)))
        if self.min_p:
            out.append(("min-p", MinPLogitsWarper(self.min_p)))
        return out
