"""The remote backend: an OpenAI-compatible inference engine generates in place of a local model.

    NUCLEUS_BACKEND=http://127.0.0.1:8000/v1 python app.py     # or --backend URL (app and CLI)

Engines built for serving many people (vLLM, SGLang, llama.cpp's server, `transformers serve`)
batch requests on one GPU and scale out; they all speak the OpenAI completions API, and Nucleus
(a plain MistralForCausalLM) runs on all of them. `stream_remote` sends the same validated
`SamplingSettings` to `/v1/completions` and yields the same `Update`s as local generation:

- standard fields: temperature, top_p, max_tokens, stop, seed, logprobs;
- the rest where each engine takes it: vLLM and SGLang read top_k, min_p and
  repetition_penalty from extra body fields; llama.cpp's server reads top_k, min_p and its
  repeat_penalty, which is transformers' rule once its window (repeat_last_n) spans the whole
  context and its samplers run in transformers' order (both sent); `transformers serve` takes a
  whole GenerationConfig as JSON, so every field is sent. Any other server ("openai") gets the
  standard fields only.
A setting the engine cannot honour is refused with a sentence, never dropped in silence.

Token probabilities: with `logprobs` (the API) or `records` (the page's token view) the engine is
asked for that many alternatives per token, in either shape engines send them (OpenAI's legacy
completions lists, as vLLM and SGLang do, or per-token objects as llama.cpp's server does);
they become OpenAI legacy lists for the API and TokenRecords for the page. Engines report the
model's probabilities (or, by their settings, the sampled ones), not what each sampling
setting did, so those records hold the model's column only. `transformers serve` returns none.

Streaming is server-sent events over httpx. Stop (or a dropped visitor) closes the response,
and the engines end a request whose client has gone. An engine that is down or fails mid-run
becomes one sentence (`RemoteError`); the next request tries again.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from .settings import SamplingSettings, SettingsError
from .tokenizer import load_tokenizer

# "openai": any other OpenAI-compatible server: only the standard fields are sent (a setting that
# needs more is refused), since what it does with extra fields is unknown.
ENGINES = ("vllm", "sglang", "llama.cpp", "transformers", "openai")
OWNED_BY = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp", "local": "transformers"}
# llama.cpp's sampler chain in transformers' order: penalties, then temperature, then the cuts
# (its default applies temperature last, which changes what top-p and min-p keep)
LLAMA_CPP_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]
LLAMA_CPP_RANDOM_SEED = 2**32 - 1       # llama.cpp's LLAMA_DEFAULT_SEED: "pick one at random"
CONNECT_SECONDS = 5.0
DEFAULT_CONTEXT = 4096      # when the engine does not say (vLLM and SGLang report max_model_len,
                            # llama.cpp's server meta.n_ctx)


class RemoteError(RuntimeError):
    """The engine is unreachable or failed: one sentence a user can act on."""


@dataclass
class RemoteModel:
    """What the page, the API and the CLI need to know of a model served elsewhere."""
    base_url: str           # ".../v1"
    model_id: str           # the engine's name for it (from /v1/models)
    engine: str             # one of ENGINES
    context_length: int
    tokenizer: object       # the Mistral 32k tokenizer, for the prompt meter
    api_key: str | None = None
    context_known: bool = True   # False: the engine did not say; DEFAULT_CONTEXT is assumed
    quantization: str = "remote"
    dtype: str = "bfloat16"   # for the code panel: how to load the same weights with transformers

    @property
    def name(self) -> str:
        return self.model_id.rstrip("/").split("/")[-1]

    @property
    def source(self) -> str:
        """The engine's model id: a Hub id or a folder, what transformers would load."""
        return self.model_id

    def describe(self) -> str:
        engine = self.engine if self.engine != "openai" else "an OpenAI-compatible engine"
        context = (f"context {self.context_length} tokens" if self.context_known else
                   f"context {self.context_length} tokens (assumed: the engine does not say)")
        return f"{self.name}, served by {engine} at {self.base_url}, {context}"


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def connect(url: str, engine: str = "auto", model: str | None = None, api_key: str | None = None) -> RemoteModel:
    """Ask the engine which models it serves (GET /v1/models); pick `model` or its first one."""
    from .loading import ModelLoadError

    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    if engine != "auto" and engine not in ENGINES:
        raise ModelLoadError(f"backend engine must be auto or one of {', '.join(ENGINES)}, got {engine!r}")
    try:
        r = httpx.get(f"{base}/models", headers=_headers(api_key), timeout=CONNECT_SECONDS)
        r.raise_for_status()
        listed = r.json().get("data", [])
    except (httpx.HTTPError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""      # httpx adds a second line with a help link
        raise ModelLoadError(f"The inference engine at {base} did not answer /models ({type(e).__name__}: {detail}); "
                             "is it running, and is the URL right (it ends in /v1)?") from None
    if not listed:
        raise ModelLoadError(f"The inference engine at {base} serves no model.")
    entry = next((m for m in listed if m.get("id") == model), None) if model else listed[0]
    if entry is None:
        raise ModelLoadError(f"The engine at {base} does not serve {model!r}; it serves "
                             f"{', '.join(m.get('id', '?') for m in listed)}.")
    if engine == "auto":
        engine = OWNED_BY.get(str(entry.get("owned_by", "")).lower(), "openai")
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}     # llama.cpp's server: per slot
    context = entry.get("max_model_len") or entry.get("context_length") or meta.get("n_ctx") or \
        _config_context(entry["id"])
    return RemoteModel(base, entry["id"], engine, int(context or DEFAULT_CONTEXT), load_tokenizer(), api_key,
                       context_known=bool(context))


def ignored_local_flags(args) -> list[str]:
    """The command-line flags that only shape a local model, set alongside --backend (the engine
    serves the model as it was started; --model picks among the models it serves)."""
    return [f"--{name} {getattr(args, name)}" for name in ("device", "dtype", "quantize")
            if getattr(args, name, "auto") not in ("auto", None)]


def _config_context(model_id: str) -> int | None:
    """The context of the model an engine serves, from its config.json when that is at hand: a
    folder on this machine (`transformers serve models/nucleus-nano`) or a Hub id already in the
    local cache. Nothing is downloaded."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_id, local_files_only=True, trust_remote_code=False)
    except Exception:    # noqa: BLE001 - not a folder, not cached, not a config: the engine's word is all
        return None
    return getattr(cfg, "max_position_embeddings", None)


# ---- the request ---------------------------------------------------------------------------------
def request_body(rm: RemoteModel, prompt: str, settings: SamplingSettings, seed: int, logprobs: int) -> dict:
    """The /v1/completions body for these settings on this engine; SettingsError for what it cannot do."""
    body = {"model": rm.model_id, "prompt": prompt, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature, "top_p": settings.top_p, "seed": seed, "stream": True}
    if settings.stop:
        body["stop"] = list(settings.stop)
    if rm.engine == "transformers":
        if logprobs:
            raise SettingsError("logprobs", "transformers serve does not return log-probabilities")
        # every field spelled out: the served model's generation_config.json fills whatever is left unset
        cfg = settings.to_generation_config(eos_token_id=rm.tokenizer.eos_token_id).to_dict()
        cfg = {k: v for k, v in cfg.items() if k in GENERATION_FIELDS and v is not None}
        if not settings.greedy:
            cfg.setdefault("min_p", 0.0)   # explicit: the served model's own min_p must not fill it in
        body["generation_config"] = json.dumps(cfg)
        return body
    if logprobs:
        body["logprobs"] = logprobs
    if settings.no_repeat_ngram_size:
        raise SettingsError("no_repeat_ngram_size", f"{rm.engine} has no no-repeat n-gram setting; use 0 with "
                                                    "this backend")
    if rm.engine == "openai":
        extra = [name for name, value, off in (("top_k", settings.top_k, 0), ("min_p", settings.min_p, 0.0),
                                               ("repetition_penalty", settings.repetition_penalty, 1.0)) if value != off]
        if extra:
            raise SettingsError(extra[0], f"the engine at {rm.base_url} is not one Nucleus knows, so only temperature, "
                                          "top-p, max new tokens, stop strings and the seed are sent; set "
                                          f"{extra[0]} to {dict(top_k=0, min_p=0, repetition_penalty=1)[extra[0]]}, or, "
                                          "if it is vLLM, SGLang, llama.cpp's server or transformers serve, name it "
                                          "with --backend-engine")
    elif rm.engine == "llama.cpp":
        # llama.cpp's repeat penalty is transformers' rule (logit / p if > 0, else * p) over its last
        # repeat_last_n tokens, prompt included: over the whole context it is the same penalty.
        if seed == LLAMA_CPP_RANDOM_SEED:
            raise SettingsError("seed", f"llama.cpp reads {seed} as 'a random seed'; use a smaller one")
        # cache_prompt off: with llama-server's prompt cache on, the same seeded request gave other
        # text depending on whether its prompt was still cached
        body.update(top_k=settings.top_k, min_p=settings.min_p, repeat_penalty=settings.repetition_penalty,
                    repeat_last_n=rm.context_length, samplers=LLAMA_CPP_SAMPLERS, cache_prompt=False)
    else:   # vLLM and SGLang: extra sampling parameters in the body; top_k -1 = off in vLLM
        body.update(top_k=settings.top_k or -1, min_p=settings.min_p, repetition_penalty=settings.repetition_penalty)
    return body


GENERATION_FIELDS = {"max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                     "no_repeat_ngram_size", "eos_token_id", "pad_token_id", "stop_strings"}


def _error_text(response: httpx.Response) -> str:
    try:
        data = json.loads(response.read() or b"{}")
        detail = data.get("error") or data.get("detail") or data.get("message") or data
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
    except ValueError:
        detail = response.text[:200]
    return f"{response.status_code}: {detail}"


def _add_logprobs(lp: dict, got, piece: str) -> None:
    """Append one chunk's log-probabilities to `lp` (OpenAI legacy lists, plus "ids" where known).
    Legacy shape (vLLM, SGLang): {tokens, token_logprobs, top_logprobs: [{text: logprob}], ...}.
    Per-token shape (llama.cpp's server): {content: [{id, token, logprob, top_logprobs: [{id,
    token, logprob}]}]}."""
    if not isinstance(got, dict):
        return
    if isinstance(got.get("content"), list):
        for item in got["content"]:
            if not isinstance(item, dict):
                continue
            lp["text_offset"].append(sum(len(t) for t in lp["tokens"]))
            lp["tokens"].append(str(item.get("token", "")))
            lp["token_logprobs"].append(item.get("logprob"))
            lp["ids"].append(item.get("id"))
            tops = item.get("top_logprobs") or []
            lp["top_logprobs"].append({str(t.get("token", "")): t.get("logprob") for t in tops if isinstance(t, dict)})
        return
    for text in got.get("tokens") or []:     # offsets into the generated text (engines count the prompt too)
        lp["text_offset"].append(sum(len(t) for t in lp["tokens"]))
        lp["tokens"].append(text)
    for key in ("token_logprobs", "top_logprobs"):
        lp[key] += got.get(key) or []
    lp["ids"] += [None] * (len(lp["tokens"]) - len(lp["ids"]))


def remote_records(lp: dict, shown: str, greedy: bool, tokenizer=None, cut: bool = False) -> tuple:
    """TokenRecords from an engine's log-probabilities, for the tokens whose text is shown.
    A token's text: where the engine gives token ids (llama.cpp's server), the token's own piece
    from `tokenizer`, because llama.cpp reports streamed chunks, not tokens: with a stop string it
    holds text back and shifts it ("ose", "-" came as "", "ose-") and rewrites the token it cut
    (" Key" as " K"); a byte-fallback piece keeps the engine's text (the whole character).
    `cut`: the run ended on a stop string; as locally, only whole tokens before the cut are kept.
    Only the model column is known: the stages are NaN."""
    import math

    from .tokenview import Candidate, TokenRecord, piece_text

    nan, records, at = float("nan"), [], 0
    for i, engine_text in enumerate(lp["tokens"]):
        tid = lp["ids"][i] if i < len(lp["ids"]) else None
        piece = tokenizer.convert_ids_to_tokens(tid) if tokenizer is not None and isinstance(tid, int) else None
        text = piece_text(piece) if piece and not piece.startswith("<0x") else engine_text
        if at >= len(shown) or (cut and at + len(text) > len(shown)):
            break
        at += len(text)
        chosen_lp = lp["token_logprobs"][i] if i < len(lp["token_logprobs"]) else None
        chosen_lp = float(chosen_lp) if isinstance(chosen_lp, (int, float)) else nan
        token_id = lp["ids"][i] if i < len(lp["ids"]) and isinstance(lp["ids"][i], int) else -1
        tops = lp["top_logprobs"][i] if i < len(lp["top_logprobs"]) and isinstance(lp["top_logprobs"][i], dict) else {}
        cands = {}
        for piece, value in tops.items():
            if isinstance(value, (int, float)) and piece not in cands:
                # the chosen one carries the record's id; the others an id no record has
                cands[piece] = Candidate(token_id if piece == text else -2, piece, math.exp(value), nan, nan, nan, None)
        if text not in cands:
            cands[text] = Candidate(token_id, text, math.exp(chosen_lp) if chosen_lp == chosen_lp else nan,
                                    nan, nan, nan, None)
        ordered = tuple(sorted(cands.values(), key=lambda c: -(c.raw if c.raw == c.raw else -1)))
        records.append(TokenRecord(token_id, text, chosen_lp, nan, ordered, {}, 0, greedy))
    return tuple(records)


def stream_remote(rm: RemoteModel, prompt: str, settings: SamplingSettings, cancel: threading.Event | None = None,
                  max_time: float | None = None, logprobs: int = 0, records: int = 0, warning: str | None = None,
                  prompt_start: int = 0) -> Iterator:
    """Yield generation Updates from the engine; the last has done=True. `logprobs` asks the engine
    for that many alternatives per token (the last update then carries them, OpenAI-shaped);
    `records` for the page's token view (the last update then carries TokenRecords).
    nucleus.stream fits the prompt to the context first, as for a local model, and passes the
    part to send, its `warning` and where it starts (`prompt_start`), which every Update carries."""
    import random

    from .generation import Update, cut_at_stop

    if not isinstance(prompt, str):
        raise SettingsError("prompt", f"expected text, got {type(prompt).__name__}")
    cancel = cancel or threading.Event()
    seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(2**31)
    if records and rm.engine == "transformers":
        records = 0                   # it returns none; the page says so instead of refusing the run
    body = request_body(rm, prompt, settings, seed, max(logprobs, records))
    start, text, tokens, reason = time.perf_counter(), "", 0, None
    lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [], "ids": []}
    timeout = httpx.Timeout(CONNECT_SECONDS, read=max_time or 600.0)
    try:
        with httpx.Client(timeout=timeout, headers=_headers(rm.api_key)) as client, \
                client.stream("POST", f"{rm.base_url}/completions", json=body) as response:
            if response.status_code != 200:
                raise RemoteError(f"The inference engine refused the request ({_error_text(response)}).")
            for line in response.iter_lines():
                if cancel.is_set():
                    reason = "cancelled"      # leaving the block closes the response: the engine stops
                    break
                if max_time is not None and time.perf_counter() - start >= max_time:
                    reason = "time"
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RemoteError(f"The inference engine failed mid-run: {chunk['error']}")
                choice = (chunk.get("choices") or [{}])[0]
                piece = choice.get("text") or ""
                if piece:
                    text += piece
                    tokens += 1
                _add_logprobs(lp, choice.get("logprobs"), piece)
                usage = chunk.get("usage") or {}
                tokens = usage.get("completion_tokens", tokens)
                reason = choice.get("finish_reason") or reason
                shown, _ = cut_at_stop(text, settings.stop)
                yield Update(shown, tokens, time.perf_counter() - start, seed, warning=warning, prompt_start=prompt_start,
                             max_new_tokens=settings.max_new_tokens)
    except httpx.HTTPError as e:
        raise RemoteError(f"The inference engine at {rm.base_url} is unreachable or dropped the request "
                          f"({type(e).__name__}); try again in a moment.") from None
    if reason == "stop":    # OpenAI's "stop" is the end of text or a stop string; it does not say which
        reason = "stop" if settings.stop else "eos"
    elif reason not in ("cancelled", "time", "length"):
        reason = "length" if tokens >= settings.max_new_tokens else "eos"
    shown, _ = cut_at_stop(text, settings.stop)
    cut = bool(settings.stop) and (reason == "stop" or shown != text)      # ended on a stop string
    kept = remote_records(lp, shown, settings.greedy, rm.tokenizer, cut) if lp["tokens"] else ()
    # the API's lists follow the records: their token texts, none for a cut stop string
    offsets = [sum(len(r.text) for r in kept[:i]) for i in range(len(kept))]
    legacy = {"tokens": [r.text for r in kept], "token_logprobs": lp["token_logprobs"][:len(kept)],
              "top_logprobs": lp["top_logprobs"][:len(kept)], "text_offset": offsets}
    if logprobs and lp["tokens"]:     # at most the alternatives the caller asked for
        legacy["top_logprobs"] = [dict(sorted(t.items(), key=lambda kv: -kv[1])[:logprobs]) if isinstance(t, dict)
                                  else t for t in legacy["top_logprobs"]]
    yield Update(shown, tokens, time.perf_counter() - start, seed, True, reason, warning, prompt_start,
                 records=kept if records else (),
                 max_new_tokens=settings.max_new_tokens, logprobs=legacy if logprobs and lp["tokens"] else None)


class RemoteCatalog:
    """The catalog of a Space whose model runs in a remote engine: one model, nothing to load."""

    def __init__(self, remote: RemoteModel):
        self.remote = remote
        self.choices = {remote.name: f"{remote.base_url} ({remote.model_id})"}

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    @property
    def resident(self) -> list[str]:
        return self.labels

    def check(self, label) -> str:
        from .loading import ModelLoadError
        if not isinstance(label, str) or label not in self.choices:
            raise ModelLoadError(f"model: expected one of the labels {self.labels} (text), got "
                                 f"{type(label).__name__} {label!r}")
        return label

    def get(self, label) -> RemoteModel:
        self.check(label)
        return self.remote
